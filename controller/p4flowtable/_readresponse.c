/*
 * p4flowtable._readresponse: a serialized P4Runtime ReadResponse's table
 * entries as plain values, in one pass over the bytes.
 *
 * A reconcile reads every flow entry (200,000 at 100,000 flows). Taking
 * the values out of protobuf's Python objects cost 12-15 us an entry; this
 * reads them from the wire format directly (protobuf's encoding: varints,
 * length-delimited fields). It reads only what ip.ReadBack uses, and
 * leaves every entity it does not read the way ReadBack does to protobuf
 * itself (`(None, start, end)`), so the two never disagree: an entity that
 * is not a lone table entry, a match that is not exact, a table action that
 * is not a direct action, a field of an unexpected wire type, a group, a
 * message this reads nothing of.
 *
 * entries(data, pos=0, limit=all) -> (items, next pos): from byte pos on,
 * at most limit entities; items, per entity in order, either
 *   (table_id, ((field_id, value), ...), action_id, ((param_id, value), ...),
 *    packet_count, byte_count, elapsed_ns or None, start, end)
 * with values as unsigned big-endian integers and [start, end) the
 * TableEntry's bytes, or
 *   (None, start, end)
 * with [start, end) the Entity's bytes. Repeated fields are kept in wire
 * order; a scalar given twice keeps the last, a message given twice is
 * merged, as protobuf parses them. Malformed bytes (a truncated varint or
 * field, a length past its message) raise ValueError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    const uint8_t *p, *end;
} span;

enum { VARINT = 0, I64 = 1, LEN = 2, SGROUP = 3, EGROUP = 4, I32 = 5 };
enum { OK = 0, ODD = 1, BAD = -1 };

static int varint(span *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (s->p >= s->end)
            return BAD;
        uint8_t b = *s->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return OK;
        }
    }
    return BAD;
}

/* the next field's number and wire type; for LEN, its payload in *inner */
static int field(span *s, uint32_t *num, int *wt, uint64_t *value, span *inner)
{
    uint64_t key, len;
    if (varint(s, &key) != OK)
        return BAD;
    *num = (uint32_t)(key >> 3);
    *wt = (int)(key & 7);
    if (*num == 0)              /* no field has it: protobuf's to refuse */
        return ODD;
    switch (*wt) {
    case VARINT:
        return varint(s, value);
    case I64:
        if (s->end - s->p < 8)
            return BAD;
        s->p += 8;
        return OK;
    case I32:
        if (s->end - s->p < 4)
            return BAD;
        s->p += 4;
        return OK;
    case LEN:
        if (varint(s, &len) != OK || len > (uint64_t)(s->end - s->p))
            return BAD;
        inner->p = s->p;
        inner->end = s->p + len;
        s->p += len;
        return OK;
    default:            /* groups: left to protobuf */
        return ODD;
    }
}

static PyObject *unsigned_be(span b)
{
    Py_ssize_t n = b.end - b.p;
    if (n <= 8) {
        uint64_t v = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            v = v << 8 | b.p[i];
        return PyLong_FromUnsignedLongLong(v);
    }
    return _PyLong_FromByteArray(b.p, (size_t)n, 0, 0);
}

/* (id, value) of a FieldMatch with an exact match, or of an Action.Param */
static int pair(span s, uint32_t id_field, uint32_t value_field, int exact, PyObject *into)
{
    uint64_t id = 0, v;
    span value = {s.p, s.p}, inner;
    uint32_t num;
    int wt, r;
    while (s.p < s.end) {
        if ((r = field(&s, &num, &wt, &v, &inner)) != OK)
            return r;
        if (num == id_field) {
            if (wt != VARINT)
                return ODD;
            id = v;
        } else if (num == value_field) {
            if (wt != LEN)
                return ODD;
            if (exact) {        /* FieldMatch.Exact { bytes value = 1; }, merged */
                span e = inner;
                while (e.p < e.end) {
                    span b;
                    if ((r = field(&e, &num, &wt, &v, &b)) != OK)
                        return r;
                    if (num == 1) {
                        if (wt != LEN)
                            return ODD;
                        value = b;
                    }
                }
            } else {
                value = inner;
            }
        } else if (exact && (num == 3 || num == 4 || num == 6 || num == 7 || num == 100)) {
            return ODD;         /* ternary, lpm, range, optional, other */
        }
    }
    PyObject *pid = PyLong_FromUnsignedLong((uint32_t)id);
    PyObject *pv = unsigned_be(value);
    PyObject *t = (pid && pv) ? PyTuple_Pack(2, pid, pv) : NULL;
    Py_XDECREF(pid);
    Py_XDECREF(pv);
    if (t == NULL)
        return BAD;
    r = PyList_Append(into, t);
    Py_DECREF(t);
    return r < 0 ? BAD : OK;
}

typedef struct {
    uint64_t table_id, action_id, packets, bytes, elapsed;
    int has_elapsed;
    PyObject *match, *params;
} entry;

/* an Action: its id, its params appended */
static int action(span s, entry *e)
{
    uint64_t v;
    span inner;
    uint32_t num;
    int wt, r;
    while (s.p < s.end) {
        if ((r = field(&s, &num, &wt, &v, &inner)) != OK)
            return r;
        if (num == 1) {
            if (wt != VARINT)
                return ODD;
            e->action_id = v;
        } else if (num == 4) {
            if (wt != LEN)
                return ODD;
            if ((r = pair(inner, 2, 3, 0, e->params)) != OK)
                return r;
        }
    }
    return OK;
}

/* a message of varints alone (CounterData, IdleTimeout): field a into *x, b into *y */
static int counts(span s, uint32_t a, uint64_t *x, uint32_t b, uint64_t *y)
{
    uint64_t v;
    span inner;
    uint32_t num;
    int wt, r;
    while (s.p < s.end) {
        if ((r = field(&s, &num, &wt, &v, &inner)) != OK)
            return r;
        if (num == a || num == b) {
            if (wt != VARINT)
                return ODD;
            *(num == a ? x : y) = v;
        }
    }
    return OK;
}

static int table_entry(span s, entry *e)
{
    uint64_t v, unused = 0;
    span inner;
    uint32_t num;
    int wt, r;
    while (s.p < s.end) {
        if ((r = field(&s, &num, &wt, &v, &inner)) != OK)
            return r;
        switch (num) {
        case 1:                 /* table_id */
            if (wt != VARINT)
                return ODD;
            e->table_id = v;
            break;
        case 2:                 /* match */
            if (wt != LEN)
                return ODD;
            if ((r = pair(inner, 1, 2, 1, e->match)) != OK)
                return r;
            break;
        case 3: {               /* action: TableAction, its direct action alone */
            if (wt != LEN)
                return ODD;
            span a = inner, b;
            while (a.p < a.end) {
                if ((r = field(&a, &num, &wt, &v, &b)) != OK)
                    return r;
                if (num == 1) {
                    if (wt != LEN)
                        return ODD;
                    if ((r = action(b, e)) != OK)
                        return r;
                } else if (num == 2 || num == 3 || num == 4) {
                    return ODD;
                }
            }
            break;
        }
        case 7:                 /* counter_data */
            if (wt != LEN)
                return ODD;
            if ((r = counts(inner, 1, &e->bytes, 2, &e->packets)) != OK)
                return r;
            break;
        case 10:                /* time_since_last_hit */
            if (wt != LEN)
                return ODD;
            e->has_elapsed = 1;
            if ((r = counts(inner, 1, &e->elapsed, 0, &unused)) != OK)
                return r;
            break;
        case 6:                 /* meter_config, meter_counter_data: messages read by nobody here, */
        case 12:                /* whose bytes protobuf would check */
            return ODD;
        default:                /* scalars read by nobody here, and unknown fields */
            break;
        }
    }
    return OK;
}

/* one Entity: the item for it, or NULL with an exception set */
static PyObject *entity(span s, const uint8_t *base)
{
    uint64_t v;
    span inner, te = {NULL, NULL};
    uint32_t num;
    int wt, r, odd = 0, seen = 0;
    const uint8_t *start = s.p;
    while (s.p < s.end) {
        r = field(&s, &num, &wt, &v, &inner);
        if (r == BAD) {
            PyErr_SetString(PyExc_ValueError, "malformed ReadResponse: an entity's fields");
            return NULL;
        }
        if (r == ODD) {         /* a group: where it ends is protobuf's to find */
            odd = 1;
            break;
        }
        if (num != 2 || wt != LEN || seen++)
            odd = 1;
        else
            te = inner;
    }
    entry e = {0};
    if (!odd && te.p != NULL) {
        e.match = PyList_New(0);
        e.params = PyList_New(0);
        if (e.match == NULL || e.params == NULL)
            r = BAD;
        else
            r = table_entry(te, &e);
        if (r == BAD) {
            Py_XDECREF(e.match);
            Py_XDECREF(e.params);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "malformed ReadResponse: a table entry's fields");
            return NULL;
        }
        if (r == OK) {
            PyObject *elapsed = e.has_elapsed ? PyLong_FromLongLong((int64_t)e.elapsed) : Py_NewRef(Py_None);
            PyObject *item = Py_BuildValue(
                "(kNkNLLNnn)", (unsigned long)(uint32_t)e.table_id, PyList_AsTuple(e.match),
                (unsigned long)(uint32_t)e.action_id, PyList_AsTuple(e.params),
                (long long)(int64_t)e.packets, (long long)(int64_t)e.bytes, elapsed,
                (Py_ssize_t)(te.p - base), (Py_ssize_t)(te.end - base));
            Py_DECREF(e.match);
            Py_DECREF(e.params);
            return item;
        }
        Py_DECREF(e.match);
        Py_DECREF(e.params);
    }
    return Py_BuildValue("(Onn)", Py_None, (Py_ssize_t)(start - base), (Py_ssize_t)(s.end - base));
}

static PyObject *entries(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos = 0, limit = PY_SSIZE_T_MAX;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*|nn", &view, &pos, &limit))
        return NULL;
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "position outside the ReadResponse");
        return NULL;
    }
    const uint8_t *base = view.buf;
    span s = {base + pos, base + view.len}, inner;
    uint64_t v;
    uint32_t num;
    int wt, r;
    Py_ssize_t n = 0;
    PyObject *out = PyList_New(0);
    while (out != NULL && s.p < s.end && n < limit) {
        r = field(&s, &num, &wt, &v, &inner);
        if (r != OK) {
            PyErr_SetString(PyExc_ValueError, "malformed ReadResponse");
            Py_CLEAR(out);
            break;
        }
        if (num != 1 || wt != LEN)      /* not entities: unknown fields, as protobuf takes them */
            continue;
        PyObject *item = entity(inner, base);
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
        n++;
    }
    PyBuffer_Release(&view);
    return out == NULL ? NULL : Py_BuildValue("(Nn)", out, (Py_ssize_t)(s.p - base));
}

static PyMethodDef methods[] = {
    {"entries", entries, METH_VARARGS,
     "entries(data, pos=0, limit=all) -> (items, next pos): a serialized ReadResponse's entities from pos on, "
     "at most limit of them, as plain values (see the module)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "p4flowtable._readresponse",
    "A serialized P4Runtime ReadResponse's table entries as plain values, in one pass.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__readresponse(void)
{
    return PyModule_Create(&module);
}
