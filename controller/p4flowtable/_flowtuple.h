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

/* the names a tuple's fields are read by where it is no FlowTuple, and an
 * address's "_ip", interned; -1 on error */
static inline int intern_tuple_names(PyObject **ip, PyObject **src, PyObject **dst, PyObject **l4proto,
                                     PyObject **sport, PyObject **dport)
{
    const char *texts[6] = {"_ip", "src", "dst", "l4proto", "sport", "dport"};
    PyObject **vars[6] = {ip, src, dst, l4proto, sport, dport};
    for (int i = 0; i < 6; i++)
        if ((*vars[i] = PyUnicode_InternFromString(texts[i])) == NULL)
            return -1;
    return 0;
}

/* ipaddress's class of this name (a new reference), NULL on error */
static inline PyObject *ipaddress_class(const char *name)
{
    PyObject *ipaddress = PyImport_ImportModule("ipaddress");
    if (ipaddress == NULL)
        return NULL;
    PyObject *cls = PyObject_GetAttrString(ipaddress, name);
    Py_DECREF(ipaddress);
    return cls;
}

/* model.FlowTuple's native type where _flowtuple is built (it is optional,
 * as every module is), else NULL with no error set */
static inline PyTypeObject *flowtuple_type_if_built(void)
{
    PyObject *ft = PyImport_ImportModule("p4flowtable._flowtuple");
    if (ft == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *t = PyObject_GetAttrString(ft, "FlowTuple");
    Py_DECREF(ft);
    if (t == NULL)
        PyErr_Clear();
    return (PyTypeObject *)t;
}

#endif
