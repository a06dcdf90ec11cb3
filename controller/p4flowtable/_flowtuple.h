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

/* an address's "_ip", and the names a tuple's fields are read by where it
 * is no FlowTuple (src, dst, l4proto, sport, dport), interned; -1 on error */
static inline int intern_tuple_names(PyObject **ip, PyObject *fields[5])
{
    const char *texts[5] = {"src", "dst", "l4proto", "sport", "dport"};
    if ((*ip = PyUnicode_InternFromString("_ip")) == NULL)
        return -1;
    for (int i = 0; i < 5; i++)
        if ((fields[i] = PyUnicode_InternFromString(texts[i])) == NULL)
            return -1;
    return 0;
}

/* a tuple's src, dst, l4proto, sport, dport (f, new references): a
 * FlowTuple's read in place (ft_type: its type, NULL where it is not
 * built), any other tuple's by attribute (fields: intern_tuple_names');
 * -1 on error */
static inline int tuple_fields(PyObject *t, PyTypeObject *ft_type, PyObject *const fields[5], PyObject *f[5])
{
    if (ft_type != NULL && Py_IS_TYPE(t, ft_type)) {
        FlowTupleObject *ft = (FlowTupleObject *)t;
        PyObject *in[5] = {ft->src, ft->dst, ft->l4proto, ft->sport, ft->dport};
        for (int i = 0; i < 5; i++)
            f[i] = Py_NewRef(in[i]);
        return 0;
    }
    for (int i = 0; i < 5; i++)
        if ((f[i] = PyObject_GetAttr(t, fields[i])) == NULL) {
            while (i--)
                Py_DECREF(f[i]);
            return -1;
        }
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
