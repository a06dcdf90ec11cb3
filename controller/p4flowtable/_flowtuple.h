/* model.FlowTuple's layout (_flowtuple.c), for the modules that read it in place */
#ifndef P4FT_FLOWTUPLE_H
#define P4FT_FLOWTUPLE_H
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *src, *dst, *l4proto, *sport, *dport;
    Py_hash_t hash;
} FlowTupleObject;

/* int(addr), as a new reference: an ipaddress object's _ip (read without
 * calling its __int__), else int() of it. ip_name: the interned "_ip". */
static inline PyObject *address_int(PyObject *addr, PyObject *ip_name)
{
    PyObject *v = PyObject_GetAttr(addr, ip_name);
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return NULL;
        PyErr_Clear();
        return PyNumber_Long(addr);
    }
    if (!PyLong_CheckExact(v))
        Py_SETREF(v, PyNumber_Long(v));
    return v;
}

#endif
