/* model.FlowTuple's layout (_flowtuple.c), for the modules that read it in place */
#ifndef P4FT_FLOWTUPLE_H
#define P4FT_FLOWTUPLE_H
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *src, *dst, *l4proto, *sport, *dport;
    Py_hash_t hash;
} FlowTupleObject;

#endif
