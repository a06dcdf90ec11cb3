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
 *
 * entries(data, pos, limit, tables, actions): the same, but a flow entry
 * comes as ip.Held's nine values (what ip.ReadBack.held makes of the first
 * form: tables and actions are ReadBack's), and a table entry ReadBack.held
 * finds no flow entry of as (False, start, end), [start, end) its bytes.
 * The reader makes 200,000 Helds a reconcile at 100,000 flows; made in
 * Python from the first form, they cost it a third of its time.
 *
 * as_written(h, peer, kinds, chosen) -> bool or None: ip.ReadBack.as_written
 * (kinds and chosen are ReadBack's) of two Helds, the checksum deltas
 * computed modulo 0xffff from the values' 16-bit words; None where the
 * values are not of the shape this reads (ReadBack.as_written decides).
 * Called twice for every pair the reader makes.
 *
 * pairing(held, unpaired, at, kinds, chosen, as_written) -> (pairs,
 * singles, records, joined): entryread.Pairing.add of a list of Helds
 * (unpaired is its dict, kept between calls), then entryread.join_pairs of
 * the pairs with `at` (the index: match -> (place, 0 or 1)); as_written is
 * ReadBack.as_written, for what the native check leaves to it.
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

/* the value of the last (id, value) of items with this id, borrowed; NULL if none */
static PyObject *last_of(PyObject *items, PyObject *want)
{
    unsigned long id = PyLong_AsUnsignedLong(want);
    if (id == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return NULL;
    }
    for (Py_ssize_t i = PyList_GET_SIZE(items) - 1; i >= 0; i--) {
        PyObject *t = PyList_GET_ITEM(items, i);
        if (PyLong_AsUnsignedLong(PyTuple_GET_ITEM(t, 0)) == id)
            return PyTuple_GET_ITEM(t, 1);
    }
    return NULL;
}

/* the values of these ids in this order (last_of each), or NULL (none set) when one is missing */
static PyObject *in_order(PyObject *items, PyObject *ids)
{
    Py_ssize_t n = PyTuple_GET_SIZE(ids);
    PyObject *out = PyTuple_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *v = last_of(items, PyTuple_GET_ITEM(ids, i));
        if (v == NULL)
            Py_CLEAR(out);
        else
            PyTuple_SET_ITEM(out, i, Py_NewRef(v));
    }
    return out;
}

/* ReadBack.held of a parsed entry: Held's nine values; Py_False where it
 * finds no flow entry; Py_None (borrowed) where the layouts are not of the
 * shape this reads (the caller gives the first form, for ReadBack.held to
 * judge); NULL with an exception set */
static PyObject *held(entry *e, PyObject *tables, PyObject *actions, PyObject *elapsed)
{
    PyObject *tid = PyLong_FromUnsignedLong((uint32_t)e->table_id);
    PyObject *aid = PyLong_FromUnsignedLong((uint32_t)e->action_id);
    PyObject *fids = NULL, *act = NULL, *keys = NULL, *values = NULL, *out = NULL;
    if (tid == NULL || aid == NULL)
        goto done;
    fids = PyDict_GetItemWithError(tables, tid);
    if (fids == NULL && PyErr_Occurred())
        goto done;
    act = PyDict_GetItemWithError(actions, aid);
    if (act == NULL && PyErr_Occurred())
        goto done;
    if (fids == NULL || act == NULL) {
        out = Py_NewRef(Py_False);
        goto done;
    }
    Py_ssize_t nh, mtu;
    if (!PyTuple_Check(fids) || PyTuple_GET_SIZE(fids) != 6 || !PyTuple_Check(act) || PyTuple_GET_SIZE(act) != 3
            || !PyTuple_Check(PyTuple_GET_ITEM(act, 0))) {
        out = Py_None;          /* borrowed: not this function's shape */
        goto done;
    }
    PyObject *pids = PyTuple_GET_ITEM(act, 0);
    nh = PyLong_AsSsize_t(PyTuple_GET_ITEM(act, 1));
    mtu = PyLong_AsSsize_t(PyTuple_GET_ITEM(act, 2));
    if (PyErr_Occurred() || nh < 0 || mtu < 0 || nh >= PyTuple_GET_SIZE(pids) || mtu >= PyTuple_GET_SIZE(pids)) {
        PyErr_Clear();
        out = Py_None;
        goto done;
    }
    keys = in_order(e->match, fids);
    values = keys != NULL ? in_order(e->params, pids) : NULL;
    if (PyErr_Occurred())
        goto done;
    if (keys == NULL || values == NULL) {
        out = Py_NewRef(Py_False);
        goto done;
    }
    PyObject **k = &PyTuple_GET_ITEM(keys, 0);
    out = Py_BuildValue("((OO)O(OOOOOO)(OO)OOLLO)", tid, keys, k[0], tid, k[1], k[2], k[3], k[4], k[5], aid, values,
                        PyTuple_GET_ITEM(values, nh), PyTuple_GET_ITEM(values, mtu),
                        (long long)(int64_t)e->packets, (long long)(int64_t)e->bytes, elapsed);
done:
    Py_XDECREF(tid);
    Py_XDECREF(aid);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    return out;
}

/* one Entity: the item for it, or NULL with an exception set */
static PyObject *entity(span s, const uint8_t *base, PyObject *tables, PyObject *actions)
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
            PyObject *item = NULL;
            if (tables != NULL && elapsed != NULL) {
                item = held(&e, tables, actions, elapsed);
                if (item == Py_False) {
                    Py_DECREF(item);
                    item = Py_BuildValue("(Onn)", Py_False, (Py_ssize_t)(te.p - base), (Py_ssize_t)(te.end - base));
                } else if (item == Py_None) {
                    item = NULL;        /* the first form, below */
                } else {
                    Py_DECREF(e.match);
                    Py_DECREF(e.params);
                    Py_DECREF(elapsed);
                    return item;        /* NULL: an exception set */
                }
                if (item != NULL || PyErr_Occurred()) {
                    Py_DECREF(e.match);
                    Py_DECREF(e.params);
                    Py_DECREF(elapsed);
                    return item;
                }
            }
            item = Py_BuildValue(
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
    PyObject *tables = NULL, *actions = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*|nnO!O!", &view, &pos, &limit, &PyDict_Type, &tables, &PyDict_Type, &actions))
        return NULL;
    if ((tables == NULL) != (actions == NULL)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "tables and actions go together");
        return NULL;
    }
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
        PyObject *item = entity(inner, base, tables, actions);
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
        n++;
    }
    PyBuffer_Release(&view);
    return out == NULL ? NULL : Py_BuildValue("(Nn)", out, (Py_ssize_t)(s.p - base));
}

#define CSUM 0xFFFFu
#define TTL_DECREMENT_DELTA 0xFEFFu

/* v mod 0xffff (2^16 is 1 mod 0xffff: the sum of its 16-bit words), for a
 * non-negative int of at most 128 bits; -1 otherwise */
static long mod_csum(PyObject *v)
{
    if (!PyLong_CheckExact(v))
        return -1;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (!overflow)
        return x < 0 ? -1 : (long)(x % CSUM);
    if (overflow < 0)
        return -1;
    unsigned char b[16];
    if (_PyLong_AsByteArray((PyLongObject *)v, b, 16, 1, 0) < 0) {
        PyErr_Clear();
        return -1;
    }
    unsigned long sum = 0;
    for (int i = 0; i < 16; i += 2)
        sum += (unsigned long)b[i] | (unsigned long)b[i + 1] << 8;
    return (long)(sum % CSUM);
}

/* csum_delta from values mod 0xffff */
static long delta(long old, long new, long extra)
{
    long d = ((new - old + extra) % (long)CSUM + (long)CSUM) % (long)CSUM;
    return d ? d : (long)CSUM;
}

static int int_eq(PyObject *a, PyObject *b)
{
    return a == b || PyObject_RichCompareBool(a, b, Py_EQ);
}

static PyObject *as_written(PyObject *self, PyObject *args)
{
    PyObject *h, *peer, *kinds, *chosen;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!O!", &PyTuple_Type, &h, &PyTuple_Type, &peer, &PyDict_Type, &kinds,
                          &PyDict_Type, &chosen))
        return NULL;
    if (PyTuple_GET_SIZE(h) != 9 || PyTuple_GET_SIZE(peer) != 9)
        Py_RETURN_NONE;
    PyObject *m = PyTuple_GET_ITEM(h, 2), *pm = PyTuple_GET_ITEM(peer, 2), *act = PyTuple_GET_ITEM(h, 3);
    if (!PyTuple_Check(m) || !PyTuple_Check(pm) || !PyTuple_Check(act) || PyTuple_GET_SIZE(m) != 6
            || PyTuple_GET_SIZE(pm) != 6 || PyTuple_GET_SIZE(act) != 2 || !PyTuple_Check(PyTuple_GET_ITEM(act, 1)))
        Py_RETURN_NONE;
    PyObject **a = &PyTuple_GET_ITEM(m, 0), **b = &PyTuple_GET_ITEM(pm, 0);   /* tid, src, dst, proto, sport, dport */
    PyObject *aid = PyTuple_GET_ITEM(act, 0), *values = PyTuple_GET_ITEM(act, 1);
    PyObject *kind = PyDict_GetItemWithError(kinds, aid);
    if (kind == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;         /* ReadBack.as_written raises KeyError */
    }
    if (!PyTuple_Check(kind) || PyTuple_GET_SIZE(kind) != 2)
        Py_RETURN_NONE;
    PyObject *version = PyTuple_GET_ITEM(kind, 1);
    int same[5];
    PyObject *pairs[5][2] = {{b[1], a[2]}, {b[2], a[1]}, {b[4], a[5]}, {b[5], a[4]}, {b[3], a[3]}};
    for (int i = 0; i < 5; i++)
        if ((same[i] = int_eq(pairs[i][0], pairs[i][1])) < 0)
            return NULL;
    int nat = !(same[0] && same[1] && same[2] && same[3] && same[4]);
    PyObject *key = Py_BuildValue("(OOO)", version, a[3], nat ? Py_True : Py_False);
    if (key == NULL)
        return NULL;
    PyObject *layout = PyDict_GetItemWithError(chosen, key);
    Py_DECREF(key);
    if (layout == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_FALSE;
    }
    if (!PyTuple_Check(layout) || PyTuple_GET_SIZE(layout) != 4 || !PyTuple_Check(PyTuple_GET_ITEM(layout, 3)))
        Py_RETURN_NONE;
    int r;
    if ((r = int_eq(PyTuple_GET_ITEM(layout, 0), a[0])) <= 0 || (r = int_eq(b[0], a[0])) <= 0
            || (r = int_eq(PyTuple_GET_ITEM(layout, 2), aid)) <= 0) {
        if (r < 0)
            return NULL;
        Py_RETURN_FALSE;
    }
    /* _param_values: nexthop, then with NAT the other direction's tuple reversed, mtu, deltas */
    PyObject *want[8];
    long deltas[2] = {0, 0};
    Py_ssize_t n;
    want[0] = PyTuple_GET_ITEM(h, 4);
    if (!nat) {
        want[1] = PyTuple_GET_ITEM(h, 5);
        n = 2;
    } else {
        long v4 = PyLong_AsLong(version);
        if (v4 == -1 && PyErr_Occurred())
            return NULL;
        long x[8];
        PyObject *old[4] = {a[1], a[2], a[4], a[5]}, *new[4] = {b[2], b[1], b[5], b[4]};
        for (int i = 0; i < 4; i++)
            if ((x[i] = mod_csum(old[i])) < 0 || (x[4 + i] = mod_csum(new[i])) < 0)
                Py_RETURN_NONE;
        long addrs = x[0] + x[1], ports = x[2] + x[3], new_addrs = x[4] + x[5], new_ports = x[6] + x[7];
        want[1] = b[2];
        want[2] = b[1];
        want[3] = b[5];
        want[4] = b[4];
        want[5] = PyTuple_GET_ITEM(h, 5);
        if (v4 == 4) {
            deltas[0] = delta(addrs, new_addrs, TTL_DECREMENT_DELTA);
            deltas[1] = delta(addrs + ports, new_addrs + new_ports, 0);
            n = 8;
        } else {
            deltas[0] = delta(addrs + ports, new_addrs + new_ports, 0);
            n = 7;
        }
        for (Py_ssize_t i = 6; i < n; i++)
            want[i] = NULL;     /* a delta: deltas[i - 6] */
    }
    /* held_action: the values of the layout's parameters that have an id */
    PyObject *params = PyTuple_GET_ITEM(layout, 3);
    if (PyTuple_GET_SIZE(params) != n)
        Py_RETURN_NONE;
    Py_ssize_t k = 0, nv = PyTuple_GET_SIZE(values);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyTuple_GET_ITEM(params, i);
        if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) < 1)
            Py_RETURN_NONE;
        if (PyTuple_GET_ITEM(p, 0) == Py_None)
            continue;
        if (k >= nv)
            Py_RETURN_FALSE;
        PyObject *got = PyTuple_GET_ITEM(values, k++);
        if (want[i] != NULL) {
            if ((r = int_eq(got, want[i])) < 0)
                return NULL;
        } else {
            if (!PyLong_CheckExact(got))
                Py_RETURN_NONE;
            int overflow;
            long long g = PyLong_AsLongLongAndOverflow(got, &overflow);
            if (g == -1 && PyErr_Occurred())
                return NULL;
            r = !overflow && g == deltas[i - 6];
        }
        if (!r)
            Py_RETURN_FALSE;
    }
    if (k != nv)
        Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

/* ReadBack.peer of a Held: a new reference, or NULL with an exception set */
static PyObject *peer_of(PyObject *h, PyObject *kinds)
{
    PyObject *m = PyTuple_GET_ITEM(h, 2), *act = PyTuple_GET_ITEM(h, 3);
    if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) != 6 || !PyTuple_Check(act) || PyTuple_GET_SIZE(act) != 2) {
        PyErr_SetString(PyExc_ValueError, "not a Held");
        return NULL;
    }
    PyObject *kind = PyDict_GetItemWithError(kinds, PyTuple_GET_ITEM(act, 0));
    if (kind == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, PyTuple_GET_ITEM(act, 0));
        return NULL;
    }
    int nat = PyObject_IsTrue(PyTuple_GET_ITEM(kind, 0));
    if (nat < 0)
        return NULL;
    PyObject **a = &PyTuple_GET_ITEM(m, 0);
    if (!nat)
        return PyTuple_Pack(6, a[0], a[2], a[1], a[3], a[5], a[4]);
    PyObject *v = PyTuple_GET_ITEM(act, 1);
    if (!PyTuple_Check(v) || PyTuple_GET_SIZE(v) < 5) {
        PyErr_SetString(PyExc_IndexError, "tuple index out of range");
        return NULL;
    }
    PyObject **w = &PyTuple_GET_ITEM(v, 0);
    return PyTuple_Pack(6, a[0], w[2], w[1], a[3], w[4], w[3]);
}

/* as_written, natively where it can, else by the Python given: 1, 0, -1 (an exception) */
static int written(PyObject *h, PyObject *peer, PyObject *kinds, PyObject *chosen, PyObject *py)
{
    PyObject *args = PyTuple_Pack(4, h, peer, kinds, chosen);
    if (args == NULL)
        return -1;
    PyObject *r = as_written(NULL, args);
    Py_DECREF(args);
    if (r == Py_None) {
        Py_DECREF(r);
        r = PyObject_CallFunctionObjArgs(py, h, peer, NULL);
    }
    if (r == NULL)
        return -1;
    int ok = PyObject_IsTrue(r);
    Py_DECREF(r);
    return ok;
}

/* join_pairs' record of a pair (o, r) joined at place */
static PyObject *record(PyObject *place, PyObject *o, PyObject *r)
{
    PyObject *io = PyTuple_GET_ITEM(o, 8), *ir = PyTuple_GET_ITEM(r, 8), *idle = Py_None;
    if (io != Py_None && ir != Py_None) {
        int lt = PyObject_RichCompareBool(ir, io, Py_LT);
        if (lt < 0)
            return NULL;
        idle = lt ? ir : io;    /* min(): the first of equals */
    }
    return PyTuple_Pack(12, place, PyTuple_GET_ITEM(o, 1), PyTuple_GET_ITEM(o, 4), PyTuple_GET_ITEM(o, 5),
                        PyTuple_GET_ITEM(r, 1), PyTuple_GET_ITEM(r, 4), PyTuple_GET_ITEM(r, 5),
                        PyTuple_GET_ITEM(o, 6), PyTuple_GET_ITEM(r, 6), PyTuple_GET_ITEM(o, 7),
                        PyTuple_GET_ITEM(r, 7), idle);
}

static int append2(PyObject *list, PyObject *a, PyObject *b)
{
    PyObject *t = PyTuple_Pack(2, a, b);
    int r = t == NULL ? -1 : PyList_Append(list, t);
    Py_XDECREF(t);
    return r;
}

static PyObject *pairing(PyObject *self, PyObject *args)
{
    PyObject *held, *unpaired, *at, *kinds, *chosen, *py;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O", &PyList_Type, &held, &PyDict_Type, &unpaired, &PyDict_Type, &at,
                          &PyDict_Type, &kinds, &PyDict_Type, &chosen, &py))
        return NULL;
    PyObject *pairs = PyList_New(0), *singles = PyList_New(0), *records = PyList_New(0), *joined = PyList_New(0);
    if (pairs == NULL || singles == NULL || records == NULL || joined == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(held); i++) {
        PyObject *h = PyList_GET_ITEM(held, i);
        if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) != 9) {
            PyErr_SetString(PyExc_ValueError, "not a Held");
            goto fail;
        }
        PyObject *match = PyTuple_GET_ITEM(h, 2);
        PyObject *key = peer_of(h, kinds);
        if (key == NULL)
            goto fail;
        PyObject *other = PyDict_GetItemWithError(unpaired, key);
        if (other == NULL) {
            Py_DECREF(key);
            if (PyErr_Occurred())
                goto fail;
            int in = PyDict_Contains(unpaired, match);
            if (in < 0 || (in ? PyList_Append(singles, h) : PyDict_SetItem(unpaired, match, h)) < 0)
                goto fail;
            continue;
        }
        Py_INCREF(other);
        int gone = PyDict_DelItem(unpaired, key);
        Py_DECREF(key);
        if (gone < 0) {
            Py_DECREF(other);
            goto fail;
        }
        /* other, then h: the order Pairing gives */
        PyObject *back = peer_of(other, kinds);
        int ok = back == NULL ? -1 : PyObject_RichCompareBool(back, match, Py_EQ);
        Py_XDECREF(back);
        if (ok > 0)
            ok = written(h, other, kinds, chosen, py);
        if (ok > 0)
            ok = written(other, h, kinds, chosen, py);
        if (ok < 0) {
            Py_DECREF(other);
            goto fail;
        }
        if (!ok) {
            ok = PyList_Append(singles, other) < 0 || PyList_Append(singles, h) < 0 ? -1 : 0;
            Py_DECREF(other);
            if (ok < 0)
                goto fail;
            continue;
        }
        /* join_pairs: a pair whose two matches are one place's, either way round */
        PyObject *x = PyDict_GetItemWithError(at, PyTuple_GET_ITEM(other, 2));
        PyObject *y = x == NULL ? NULL : PyDict_GetItemWithError(at, match);
        if (PyErr_Occurred()) {
            Py_DECREF(other);
            goto fail;
        }
        int joins = 0;
        if (x != NULL && y != NULL && PyTuple_Check(x) && PyTuple_Check(y) && PyTuple_GET_SIZE(x) == 2
                && PyTuple_GET_SIZE(y) == 2) {
            int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(x, 0), PyTuple_GET_ITEM(y, 0), Py_EQ);
            int role = same > 0 ? PyObject_RichCompareBool(PyTuple_GET_ITEM(x, 1), PyTuple_GET_ITEM(y, 1), Py_EQ) : 1;
            if (same < 0 || role < 0) {
                Py_DECREF(other);
                goto fail;
            }
            joins = same && !role;
        }
        if (joins) {
            long role = PyLong_AsLong(PyTuple_GET_ITEM(x, 1));     /* 0: other is the original's */
            PyObject *o = role == 0 ? other : h, *r = role == 0 ? h : other;
            PyObject *rec = role == -1 && PyErr_Occurred() ? NULL : record(PyTuple_GET_ITEM(x, 0), o, r);
            ok = rec == NULL || PyList_Append(records, rec) < 0 || append2(joined, o, r) < 0 ? -1 : 0;
            Py_XDECREF(rec);
        } else {
            ok = append2(pairs, other, h);
        }
        Py_DECREF(other);
        if (ok < 0)
            goto fail;
    }
    return Py_BuildValue("(NNNN)", pairs, singles, records, joined);
fail:
    Py_XDECREF(pairs);
    Py_XDECREF(singles);
    Py_XDECREF(records);
    Py_XDECREF(joined);
    return NULL;
}

static PyMethodDef methods[] = {
    {"pairing", pairing, METH_VARARGS,
     "pairing(held, unpaired, at, kinds, chosen, as_written) -> (pairs, singles, records, joined): "
     "entryread.Pairing.add, then entryread.join_pairs, in native code (see the module)."},
    {"as_written", as_written, METH_VARARGS,
     "as_written(h, peer, kinds, chosen) -> bool or None: ip.ReadBack.as_written of two Helds in native code "
     "(see the module)."},
    {"entries", entries, METH_VARARGS,
     "entries(data, pos=0, limit=all, tables=None, actions=None) -> (items, next pos): a serialized "
     "ReadResponse's entities from pos on, at most limit of them, as plain values, or with tables and actions "
     "(ip.ReadBack's) its flow entries as Helds' values (see the module)."},
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
