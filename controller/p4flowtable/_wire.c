/*
 * p4flowtable._wire: a flow's two Updates packed from their templates in
 * native code (wire.EntryEncoder.flow's native half).
 *
 * wire.py compiles each (update type, table, action, idle timeout) into the
 * constant bytes between its value slots; what was left in Python per flow
 * was computing the values: the addresses' integers, whether the flow is
 * NATted, the rewrite and the checksum deltas, both directions. Here they
 * are computed from the Flow itself and written into the template's slots.
 *
 * flow_updates(variants, flow) -> (original direction's Update, reply's)
 *   variants: {(ip version, l4proto, nat): parts}; parts: the template,
 *   compiled by wire.py as (constants, steps, size, with parameters): the
 *   constant bytes joined, and per step two native-order uint16s, (CONST,
 *   n) for the constants' next n bytes or (code, width) for a value's
 *   slot, codes as K_* and P_* below and wire.py's _KEY_CODES and
 *   _PARAM_CODES; size: the Update's length.
 *   A flow whose (version, l4proto, nat) has no parts yet raises Unknown
 *   with that key, for wire.py to compile them and ask again.
 * flow: anything with tuples (two, each with src, dst as ipaddress objects,
 * l4proto, sport, dport), iif (two ints) and, where the parts hold action
 * parameters, nexthops (two ints) and routes (two, each with mtu).
 *
 * The values are those of wire.EntryEncoder.flow's Python, which
 * tests/test_wire.py holds this to (and both to protobuf): a flow is NATted
 * where its reply tuple is not its original one reversed; each direction
 * is rewritten to the other's tuple reversed; checksum deltas are sums mod
 * 0xffff (ip.csum_delta), an address's sum of 16-bit words being its value
 * mod 0xffff. A value too wide for its slot raises OverflowError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_flowtuple.h"

enum { K_IIF, K_SRC, K_DST, K_PROTO, K_SPORT, K_DPORT,
       P_NEXTHOP, P_SRC, P_DST, P_SPORT, P_DPORT, P_MTU, P_IP_CSUM, P_L4_CSUM, N_CODES };
#define CONST 0xFFFF

/* model.FlowTuple where _flowtuple is built: its fields read in place */
static PyTypeObject *flowtuple_type;

#define TTL_DECREMENT_DELTA 0xFEFF

static PyObject *Unknown, *ipv4_type, *str_ip, *str_tuples, *str_iif, *str_nexthops, *str_routes, *str_mtu,
    *tuple_field_names[5];

typedef struct {
    uint8_t src[16], dst[16];   /* big-endian, alen bytes used */
    unsigned long long l4proto, sport, dport;
    uint32_t addrs;             /* (src + dst) mod 0xffff */
} tuple_v;

static unsigned long long get_ull(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return (unsigned long long)-1;
    unsigned long long out = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    return out;
}

static uint32_t mod_ffff(const uint8_t *p, int len)
{
    uint64_t sum = 0;
    for (int i = 0; i < len; i += 2)
        sum += (uint32_t)p[i] << 8 | p[i + 1];
    return (uint32_t)(sum % 0xFFFF);
}

/* an address's big-endian bytes (alen of them); its family from the first one read */
static int address_of(PyObject *addr, uint8_t *out, int *alen)
{
    if (*alen == 0) {
        int v4 = PyObject_IsInstance(addr, ipv4_type);
        if (v4 < 0)
            return -1;
        *alen = v4 ? 4 : 16;
    }
    PyObject *v = address_int(addr, str_ip);
    if (v == NULL)
        return -1;
    int r = _PyLong_AsByteArray((PyLongObject *)v, out, (size_t)*alen, 0, 0);
    Py_DECREF(v);
    return r;
}

static int read_tuple(PyObject *t, tuple_v *v, int *alen)
{
    PyObject *f[5];     /* src, dst, l4proto, sport, dport */
    if (tuple_fields(t, flowtuple_type, tuple_field_names, f) < 0)
        return -1;
    int r = address_of(f[0], v->src, alen) < 0 || address_of(f[1], v->dst, alen) < 0 ? -1 : 0;
    if (r == 0) {
        v->l4proto = PyLong_AsUnsignedLongLong(f[2]);
        v->sport = PyLong_AsUnsignedLongLong(f[3]);
        v->dport = PyLong_AsUnsignedLongLong(f[4]);
    }
    for (int i = 0; i < 5; i++)
        Py_DECREF(f[i]);
    if (r < 0 || PyErr_Occurred())
        return -1;
    v->addrs = (mod_ffff(v->src, *alen) + mod_ffff(v->dst, *alen)) % 0xFFFF;
    return 0;
}

/* ip.csum_delta on values mod 0xffff: (new - old + extra) mod 0xffff, 0 written 0xffff */
static unsigned long long csum_delta(uint32_t old, uint32_t new, uint32_t extra)
{
    uint32_t d = (new + 0xFFFF - old + extra) % 0xFFFF;
    return d ? d : 0xFFFF;
}

/* both items of a two-item sequence attribute (each one's field where given), as unsigned integers */
static int pair(PyObject *obj, PyObject *name, PyObject *field, unsigned long long out[2])
{
    PyObject *seq = PyObject_GetAttr(obj, name);
    if (seq == NULL)
        return -1;
    for (int i = 0; i < 2; i++) {
        PyObject *item = PySequence_GetItem(seq, i);
        if (item == NULL) {
            Py_DECREF(seq);
            return -1;
        }
        out[i] = field != NULL ? get_ull(item, field) : PyLong_AsUnsignedLongLong(item);
        Py_DECREF(item);
    }
    Py_DECREF(seq);
    return PyErr_Occurred() ? -1 : 0;
}

typedef struct {
    const uint8_t *addr[N_CODES];       /* address slots: their bytes */
    unsigned long long num[N_CODES];    /* the others */
} values_t;

typedef struct {
    const uint8_t *consts;
    const uint16_t *steps;
    Py_ssize_t nsteps, size;
    int params;
} parts_t;

/* wire.py's compiled template: (constants, steps, size, with parameters) */
static int read_parts(PyObject *parts, parts_t *p)
{
    if (!PyTuple_Check(parts) || PyTuple_GET_SIZE(parts) != 4 || !PyBytes_Check(PyTuple_GET_ITEM(parts, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(parts, 1)) || PyBytes_GET_SIZE(PyTuple_GET_ITEM(parts, 1)) % 4) {
        PyErr_SetString(PyExc_TypeError, "a template's parts are (constants, steps, size, with parameters)");
        return -1;
    }
    p->consts = (const uint8_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(parts, 0));
    p->steps = (const uint16_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(parts, 1));
    p->nsteps = PyBytes_GET_SIZE(PyTuple_GET_ITEM(parts, 1)) / 4;
    p->size = PyLong_AsSsize_t(PyTuple_GET_ITEM(parts, 2));
    p->params = PyObject_IsTrue(PyTuple_GET_ITEM(parts, 3));
    if (p->size < 0 || p->params < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a template's size is negative");
        return -1;
    }
    /* the steps must fill exactly size bytes, from within the constants */
    Py_ssize_t total = 0, used = 0;
    for (Py_ssize_t k = 0; k < p->nsteps; k++) {
        uint16_t code = p->steps[2 * k], n = p->steps[2 * k + 1];
        if (code == CONST)
            used += n;
        else if (code >= N_CODES) {
            PyErr_Format(PyExc_ValueError, "slot code %d unknown", code);
            return -1;
        }
        total += n;
    }
    if (total != p->size || used != PyBytes_GET_SIZE(PyTuple_GET_ITEM(parts, 0))) {
        PyErr_SetString(PyExc_ValueError, "a template's steps do not match its size and constants");
        return -1;
    }
    return 0;
}

static PyObject *pack(const parts_t *p, const values_t *v, int alen)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, p->size);
    if (out == NULL)
        return NULL;
    uint8_t *w = (uint8_t *)PyBytes_AS_STRING(out);
    const uint8_t *c = p->consts;
    for (Py_ssize_t k = 0; k < p->nsteps; k++) {
        int code = p->steps[2 * k], width = p->steps[2 * k + 1];
        if (code == CONST) {
            memcpy(w, c, (size_t)width);
            c += width;
        } else if (v->addr[code] != NULL) {
            if (width < alen) {
                Py_DECREF(out);
                return PyErr_Format(PyExc_OverflowError, "a %d-byte address in a %d-byte slot", alen, width);
            }
            memset(w, 0, (size_t)(width - alen));
            memcpy(w + width - alen, v->addr[code], (size_t)alen);
        } else {
            unsigned long long x = v->num[code];
            if (width < 8 && x >> (8 * width)) {
                Py_DECREF(out);
                return PyErr_Format(PyExc_OverflowError, "%llu does not fit %d byte(s)", x, width);
            }
            for (int b = width - 1; b >= 0; b--, x >>= 8)
                w[b] = (uint8_t)x;
        }
        w += width;
    }
    return out;
}

static PyObject *flow_updates(PyObject *self, PyObject *args)
{
    PyObject *variants, *flow;
    if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &variants, &flow))
        return NULL;
    PyObject *tuples = PyObject_GetAttr(flow, str_tuples);
    if (tuples == NULL)
        return NULL;
    tuple_v t[2];
    int alen = 0;
    for (int d = 0; d < 2; d++) {
        PyObject *tu = PySequence_GetItem(tuples, d);
        int r = tu == NULL ? -1 : read_tuple(tu, &t[d], &alen);
        Py_XDECREF(tu);
        if (r < 0) {
            Py_DECREF(tuples);
            return NULL;
        }
    }
    Py_DECREF(tuples);
    tuple_v *o = &t[0], *r = &t[1];
    /* wire.EntryEncoder.flow's (and model.has_nat's, but for the protocol) test */
    int nat = !(memcmp(o->src, r->dst, (size_t)alen) == 0 && memcmp(o->dst, r->src, (size_t)alen) == 0 &&
                o->sport == r->dport && o->dport == r->sport);
    PyObject *key = Py_BuildValue("(iKi)", alen == 4 ? 4 : 6, o->l4proto, nat);
    if (key == NULL)
        return NULL;
    PyObject *parts = PyDict_GetItemWithError(variants, key);
    if (parts == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(Unknown, key);
        Py_DECREF(key);
        return NULL;
    }
    Py_DECREF(key);
    parts_t pt;
    if (read_parts(parts, &pt) < 0)
        return NULL;
    unsigned long long iif[2], nexthops[2] = {0, 0}, mtu[2] = {0, 0};
    if (pair(flow, str_iif, NULL, iif) < 0 ||
        (pt.params && (pair(flow, str_nexthops, NULL, nexthops) < 0 || pair(flow, str_routes, str_mtu, mtu) < 0)))
        return NULL;
    PyObject *out[2] = {NULL, NULL};
    uint32_t l4[2] = {(o->addrs + (o->sport + o->dport) % 0xFFFF) % 0xFFFF,
                      (r->addrs + (r->sport + r->dport) % 0xFFFF) % 0xFFFF};
    for (int d = 0; d < 2; d++) {
        tuple_v *me = &t[d], *other = &t[1 - d];
        values_t v = {{NULL}, {0}};
        v.addr[K_SRC] = me->src;
        v.addr[K_DST] = me->dst;
        v.num[K_IIF] = iif[d];
        v.num[K_PROTO] = me->l4proto;
        v.num[K_SPORT] = me->sport;
        v.num[K_DPORT] = me->dport;
        if (pt.params) {
            v.num[P_NEXTHOP] = nexthops[d];
            v.num[P_MTU] = mtu[d];
            /* rewritten to the other direction's tuple reversed (model.rewrite_for) */
            v.addr[P_SRC] = other->dst;
            v.addr[P_DST] = other->src;
            v.num[P_SPORT] = other->dport;
            v.num[P_DPORT] = other->sport;
            v.num[P_IP_CSUM] = csum_delta(me->addrs, other->addrs, TTL_DECREMENT_DELTA);
            v.num[P_L4_CSUM] = csum_delta(l4[d], l4[1 - d], 0);
        }
        if ((out[d] = pack(&pt, &v, alen)) == NULL) {
            Py_XDECREF(out[0]);
            return NULL;
        }
    }
    PyObject *res = PyTuple_Pack(2, out[0], out[1]);
    Py_DECREF(out[0]);
    Py_DECREF(out[1]);
    return res;
}

static PyMethodDef methods[] = {
    {"flow_updates", flow_updates, METH_VARARGS,
     "flow_updates(variants, flow) -> (original's Update, reply's): a flow's two Updates, serialized"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wire", NULL, -1, methods};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__wire(void)
{
    INTERN(str_tuples, "tuples");
    INTERN(str_iif, "iif");
    INTERN(str_nexthops, "nexthops");
    INTERN(str_routes, "routes");
    INTERN(str_mtu, "mtu");
    if (intern_tuple_names(&str_ip, tuple_field_names) < 0)
        return NULL;
    if ((ipv4_type = ipaddress_class("IPv4Address")) == NULL)
        return NULL;
    flowtuple_type = flowtuple_type_if_built();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Unknown = PyErr_NewException("p4flowtable._wire.Unknown", PyExc_LookupError, NULL);
    if (Unknown == NULL || PyModule_AddObjectRef(m, "Unknown", Unknown) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
