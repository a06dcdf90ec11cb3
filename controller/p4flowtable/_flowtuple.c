/*
 * p4flowtable._flowtuple: model.FlowTuple's native half.
 *
 * A flow's tuple is made for every conntrack event and dump entry (two of
 * them), reversed to look up the frames the kernel sent, and hashed in
 * every dict a flow passes through (the mirror, the flowtables, the
 * decisions, the routes' frames): about 25 hashes and 6 tuples made per
 * offloaded flow. As a Python class each tuple made cost 0.37 us and each
 * hash a Python call (0.06 us). This type is the same value with the same
 * interface, made and hashed without running Python:
 * - FlowTuple(src, dst, l4proto, sport, dport), read-only attributes of
 *   those names; the addresses are ipaddress objects (or anything int()
 *   takes), kept as given;
 * - its hash is hash((int(src), int(dst), l4proto, sport, dport)), as the
 *   Python class computes it (CPython's tuple hash, on the same lanes);
 * - equal to another FlowTuple of equal fields, NotImplemented against
 *   anything else;
 * - reversed(), repr() and str() as the Python class's.
 * tests/test_flowtuple.py holds the two to each other. It holds no
 * references that can form a cycle (addresses and integers), so it is not
 * tracked by the collector, which a million of them would otherwise slow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_flowtuple.h"

static PyTypeObject FlowTupleType;
static PyObject *str_ip;        /* "_ip": an ipaddress object's integer, read without calling __int__ */

/* CPython 3.11's tuplehash (Objects/tupleobject.c) over the lanes' hashes */
#if SIZEOF_PY_UHASH_T > 4
#define XXPRIME_1 ((Py_uhash_t)11400714785074694791ULL)
#define XXPRIME_2 ((Py_uhash_t)14029467366897019727ULL)
#define XXPRIME_5 ((Py_uhash_t)2870177450012600261ULL)
#define XXROTATE(x) ((x << 31) | (x >> 33))
#else
#define XXPRIME_1 ((Py_uhash_t)2654435761UL)
#define XXPRIME_2 ((Py_uhash_t)2246822519UL)
#define XXPRIME_5 ((Py_uhash_t)374761393UL)
#define XXROTATE(x) ((x << 13) | (x >> 19))
#endif

/* int(addr)'s hash: the ipaddress object's _ip where it has one, else int() of it */
static Py_hash_t address_hash(PyObject *addr)
{
    PyObject *v = address_int(addr, str_ip);
    if (v == NULL)
        return -1;
    Py_hash_t h = PyObject_Hash(v);
    Py_DECREF(v);
    return h;
}

static Py_hash_t tuple_hash(PyObject *src, PyObject *dst, PyObject *l4proto, PyObject *sport, PyObject *dport)
{
    Py_hash_t lanes[5];
    if ((lanes[0] = address_hash(src)) == -1 || (lanes[1] = address_hash(dst)) == -1 ||
        (lanes[2] = PyObject_Hash(l4proto)) == -1 || (lanes[3] = PyObject_Hash(sport)) == -1 ||
        (lanes[4] = PyObject_Hash(dport)) == -1)
        return -1;
    Py_uhash_t acc = XXPRIME_5;
    for (int i = 0; i < 5; i++) {
        acc += (Py_uhash_t)lanes[i] * XXPRIME_2;
        acc = XXROTATE(acc);
        acc *= XXPRIME_1;
    }
    acc += 5 ^ (XXPRIME_5 ^ 3527539UL);
    if (acc == (Py_uhash_t)-1)
        return 1546275796;
    return (Py_hash_t)acc;
}

static PyObject *make(PyTypeObject *type, PyObject *src, PyObject *dst, PyObject *l4proto, PyObject *sport,
                      PyObject *dport, Py_hash_t hash)
{
    if (hash == -1 && (hash = tuple_hash(src, dst, l4proto, sport, dport)) == -1)
        return NULL;
    FlowTupleObject *self = (FlowTupleObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->src = Py_NewRef(src);
    self->dst = Py_NewRef(dst);
    self->l4proto = Py_NewRef(l4proto);
    self->sport = Py_NewRef(sport);
    self->dport = Py_NewRef(dport);
    self->hash = hash;
    return (PyObject *)self;
}

static const char *const kwlist[] = {"src", "dst", "l4proto", "sport", "dport", NULL};

static PyObject *flowtuple_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *src, *dst, *l4proto, *sport, *dport;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO:FlowTuple", (char **)kwlist, &src, &dst, &l4proto, &sport,
                                     &dport))
        return NULL;
    return make(type, src, dst, l4proto, sport, dport, -1);
}

/* FlowTuple(...) with positional arguments, as every caller makes it: no argument tuple */
static PyObject *flowtuple_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || n != 5) {
        PyObject *tup = PyTuple_New(n);
        if (tup == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < n; i++)
            PyTuple_SET_ITEM(tup, i, Py_NewRef(args[i]));
        PyObject *kw = NULL;
        if (kwnames != NULL) {
            kw = PyDict_New();
            for (Py_ssize_t i = 0; kw != NULL && i < PyTuple_GET_SIZE(kwnames); i++)
                if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[n + i]) < 0)
                    Py_CLEAR(kw);
            if (kw == NULL) {
                Py_DECREF(tup);
                return NULL;
            }
        }
        PyObject *out = flowtuple_new((PyTypeObject *)type, tup, kw);
        Py_DECREF(tup);
        Py_XDECREF(kw);
        return out;
    }
    return make((PyTypeObject *)type, args[0], args[1], args[2], args[3], args[4], -1);
}

static void flowtuple_dealloc(FlowTupleObject *self)
{
    Py_XDECREF(self->src);
    Py_XDECREF(self->dst);
    Py_XDECREF(self->l4proto);
    Py_XDECREF(self->sport);
    Py_XDECREF(self->dport);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_hash_t flowtuple_hash(FlowTupleObject *self)
{
    return self->hash;
}

static PyObject *flowtuple_richcompare(PyObject *a, PyObject *b, int op)
{
    if (!PyObject_TypeCheck(b, &FlowTupleType) || !PyObject_TypeCheck(a, &FlowTupleType) ||
        (op != Py_EQ && op != Py_NE))
        Py_RETURN_NOTIMPLEMENTED;
    FlowTupleObject *x = (FlowTupleObject *)a, *y = (FlowTupleObject *)b;
    int eq = 1;
    if (x != y) {
        eq = x->hash == y->hash;
        PyObject *const xs[5] = {x->sport, x->dport, x->l4proto, x->src, x->dst};
        PyObject *const ys[5] = {y->sport, y->dport, y->l4proto, y->src, y->dst};
        for (int i = 0; eq == 1 && i < 5; i++)
            eq = PyObject_RichCompareBool(xs[i], ys[i], Py_EQ);    /* identity first, as a tuple's == */
        if (eq < 0)
            return NULL;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static PyObject *flowtuple_reversed(FlowTupleObject *self, PyObject *Py_UNUSED(ignored))
{
    return make(Py_TYPE(self), self->dst, self->src, self->l4proto, self->dport, self->sport, -1);
}

static PyObject *flowtuple_reduce(FlowTupleObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("O(OOOOO)", Py_TYPE(self), self->src, self->dst, self->l4proto, self->sport, self->dport);
}

static PyObject *flowtuple_repr(FlowTupleObject *self)
{
    return PyUnicode_FromFormat("FlowTuple(src=%R, dst=%R, l4proto=%R, sport=%R, dport=%R)", self->src, self->dst,
                                self->l4proto, self->sport, self->dport);
}

static PyObject *flowtuple_str(FlowTupleObject *self)
{
    return PyUnicode_FromFormat("src=%S dst=%S sport=%S dport=%S", self->src, self->dst, self->sport, self->dport);
}

static PyMemberDef members[] = {
    {"src", T_OBJECT, offsetof(FlowTupleObject, src), READONLY, NULL},
    {"dst", T_OBJECT, offsetof(FlowTupleObject, dst), READONLY, NULL},
    {"l4proto", T_OBJECT, offsetof(FlowTupleObject, l4proto), READONLY, NULL},
    {"sport", T_OBJECT, offsetof(FlowTupleObject, sport), READONLY, NULL},
    {"dport", T_OBJECT, offsetof(FlowTupleObject, dport), READONLY, NULL},
    {NULL},
};

static PyMethodDef flowtuple_methods[] = {
    {"reversed", (PyCFunction)flowtuple_reversed, METH_NOARGS, "The tuple of the other direction, un-NATted."},
    {"__reduce__", (PyCFunction)flowtuple_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FlowTupleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "p4flowtable._flowtuple.FlowTuple",
    .tp_doc = PyDoc_STR("What a packet of one direction carries when it enters the switch (model.FlowTuple)."),
    .tp_basicsize = sizeof(FlowTupleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = flowtuple_new,
    .tp_vectorcall = flowtuple_vectorcall,
    .tp_dealloc = (destructor)flowtuple_dealloc,
    .tp_hash = (hashfunc)flowtuple_hash,
    .tp_richcompare = flowtuple_richcompare,
    .tp_repr = (reprfunc)flowtuple_repr,
    .tp_str = (reprfunc)flowtuple_str,
    .tp_members = members,
    .tp_methods = flowtuple_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_flowtuple", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__flowtuple(void)
{
    str_ip = PyUnicode_InternFromString("_ip");
    if (str_ip == NULL || PyType_Ready(&FlowTupleType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "FlowTuple", (PyObject *)&FlowTupleType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
