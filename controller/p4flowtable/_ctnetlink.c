/*
 * p4flowtable._ctnetlink: one ctnetlink message's attributes as plain
 * values, in one pass over the bytes (ctnetlink.decode's native half).
 *
 * Every new connection reaches the daemon as a conntrack event, and every
 * resync and restart reads a dump of all of them: decoding them in Python
 * (ctnetlink.decode_walk) took 8-10 us a message, timed alone. This reads the
 * same attributes from the same layout (the kernel's uapi headers,
 * linux/netfilter/nfnetlink_conntrack.h, linux/netlink.h) and decides
 * every case the way decode_walk does, which tests/test_ctnetlink_native.py
 * holds it to, down to random corruptions of real messages:
 * - an attribute whose length is below its header or past its nest ends
 *   the walk of that nest (what came before it stands);
 * - an attribute given twice keeps the last (counters add up);
 * - a scalar too short to hold its value is left out;
 * - a tuple is read where it has both addresses, of one family, and a
 *   protocol number; ports it lacks are 0.
 *
 * decode(buf, off, end) -> (orig, reply, status, tcp_state, timeout, id,
 *   helper, tcp_flags, tcp_flags_reply, labels, packets, mark)
 * for the message in buf[off:end] (from its nlmsghdr on), in CtMsg's field
 * order after msg_type and flags; a field the message lacks is None
 * (helper: False), and a tuple is (src, dst, l4proto, sport, dport) with
 * the addresses as their 4 or 16 bytes, or, once configure() has named
 * them, the tuple type made of address objects (ctnetlink.py does that at
 * import). It never raises on the message's
 * bytes: malformed input reads as attributes left out, as in decode_walk.
 *
 * tuple_attr(atype, t) -> bytes or None: ctnetlink.tuple_attr's one-struct
 * layout, written here (every offloaded connection's conntrack update names
 * its original tuple); None where that layout does not apply or a value
 * does not fit it (addresses of two families, or not ipaddress objects, a
 * port or protocol out of range), for the Python to build or refuse.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "_flowtuple.h"

#define HDR_LEN 20                 /* struct nlmsghdr + struct nfgenmsg */
#define HDR_LEN_NL 16              /* struct nlmsghdr */
#define NLA_TYPE_MASK 0x3FFF

enum { CTA_TUPLE_ORIG = 1, CTA_TUPLE_REPLY = 2, CTA_STATUS = 3, CTA_PROTOINFO = 4, CTA_HELP = 5,
       CTA_TIMEOUT = 7, CTA_MARK = 8, CTA_COUNTERS_ORIG = 9, CTA_COUNTERS_REPLY = 10, CTA_ID = 12,
       CTA_LABELS = 22 };
enum { CTA_TUPLE_IP = 1, CTA_TUPLE_PROTO = 2 };
enum { CTA_IP_V4_SRC = 1, CTA_IP_V4_DST = 2, CTA_IP_V6_SRC = 3, CTA_IP_V6_DST = 4 };
enum { CTA_PROTO_NUM = 1, CTA_PROTO_SRC_PORT = 2, CTA_PROTO_DST_PORT = 3 };
enum { CTA_PROTOINFO_TCP = 1 };
enum { CTA_PROTOINFO_TCP_STATE = 1, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL = 4, CTA_PROTOINFO_TCP_FLAGS_REPLY = 5 };
enum { CTA_COUNTERS_PACKETS = 1 };

/* struct nlattr's two fields, in host order as the kernel writes them */
static inline uint16_t u16h(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * The next attribute of the nest [*pos, end): its type (flag bits
 * dropped) and payload [*start, *stop); 0 where the walk ends (fewer than
 * 4 bytes left, or a length below 4 or past the end), as ctnetlink.attrs.
 */
static inline int next_attr(const uint8_t *buf, Py_ssize_t *pos, Py_ssize_t end, int *type,
                            Py_ssize_t *start, Py_ssize_t *stop)
{
    if (*pos + 4 > end)
        return 0;
    uint16_t len = u16h(buf + *pos);
    if (len < 4 || *pos + len > end)
        return 0;
    *type = u16h(buf + *pos + 2) & NLA_TYPE_MASK;
    *start = *pos + 4;
    *stop = *pos + len;
    *pos += (len + 3) & ~3;
    return 1;
}

/* ctnetlink.attrs(...).get(want): the last attribute of that type */
static int last_attr(const uint8_t *buf, Py_ssize_t pos, Py_ssize_t end, int want, Py_ssize_t *start,
                     Py_ssize_t *stop)
{
    int type, found = 0;
    Py_ssize_t s, e;
    while (next_attr(buf, &pos, end, &type, &s, &e))
        if (type == want) {
            *start = s;
            *stop = e;
            found = 1;
        }
    return found;
}

typedef struct {
    const uint8_t *src, *dst;
    int alen_src, alen_dst;     /* the payload's length; 0 where absent */
    int num;                    /* -1 absent */
    unsigned sport, dport;
} tuple_t;

/* ctnetlink._tuple_walk: CTA_TUPLE_ORIG/REPLY's payload, in any order */
static void tuple_walk(const uint8_t *buf, Py_ssize_t pos, Py_ssize_t end, tuple_t *t)
{
    int type, at;
    Py_ssize_t s, e, is, ie;
    t->alen_src = t->alen_dst = 0;
    t->num = -1;
    t->sport = t->dport = 0;
    while (next_attr(buf, &pos, end, &type, &s, &e)) {
        Py_ssize_t inner = s;
        if (type == CTA_TUPLE_IP) {
            while (next_attr(buf, &inner, e, &at, &is, &ie)) {
                if (at == CTA_IP_V4_SRC || at == CTA_IP_V6_SRC) {
                    t->src = buf + is;
                    t->alen_src = (int)(ie - is);      /* any length: checked below */
                } else if (at == CTA_IP_V4_DST || at == CTA_IP_V6_DST) {
                    t->dst = buf + is;
                    t->alen_dst = (int)(ie - is);
                }
            }
        } else if (type == CTA_TUPLE_PROTO) {
            while (next_attr(buf, &inner, e, &at, &is, &ie)) {
                /* lengths counted from the attribute's header, as the walk does (ln >= 5, 6) */
                if (at == CTA_PROTO_NUM && ie - is >= 1)
                    t->num = buf[is];
                else if (at == CTA_PROTO_SRC_PORT && ie - is >= 2)
                    t->sport = (unsigned)buf[is] << 8 | buf[is + 1];
                else if (at == CTA_PROTO_DST_PORT && ie - is >= 2)
                    t->dport = (unsigned)buf[is] << 8 | buf[is + 1];
            }
        }
    }
}

/* What configure() gave: the tuple's type and each address length's constructor (from its bytes) */
static PyObject *tuple_type, *address_v4, *address_v6;

static PyObject *address(const uint8_t *p, int len)
{
    PyObject *raw = PyBytes_FromStringAndSize((const char *)p, len);
    if (raw == NULL)
        return NULL;
    PyObject *out = PyObject_CallOneArg(len == 4 ? address_v4 : address_v6, raw);
    Py_DECREF(raw);
    return out;
}

/* A tuple as (src, dst, l4proto, sport, dport), or as the configured type
 * made of those (the addresses made by their constructors); None where
 * _tuple_walk gives None */
static PyObject *tuple_value(const uint8_t *buf, Py_ssize_t pos, Py_ssize_t end)
{
    tuple_t t;
    tuple_walk(buf, pos, end, &t);
    /* an address of another length (or none) reads as no address (_addr) */
    if ((t.alen_src != 4 && t.alen_src != 16) || t.alen_src != t.alen_dst || t.num < 0)
        Py_RETURN_NONE;
    if (tuple_type == NULL)
        return Py_BuildValue("(y#y#iII)", (const char *)t.src, (Py_ssize_t)t.alen_src, (const char *)t.dst,
                             (Py_ssize_t)t.alen_dst, t.num, t.sport, t.dport);
    PyObject *args[5] = {address(t.src, t.alen_src), address(t.dst, t.alen_dst), PyLong_FromLong(t.num),
                         PyLong_FromUnsignedLong(t.sport), PyLong_FromUnsignedLong(t.dport)};
    PyObject *out = NULL;
    if (args[0] && args[1] && args[2] && args[3] && args[4])
        out = PyObject_Vectorcall(tuple_type, args, 5, NULL);
    for (int i = 0; i < 5; i++)
        Py_XDECREF(args[i]);
    return out;
}

static PyObject *configure(PyObject *self, PyObject *args)
{
    PyObject *type, *v4, *v6;
    if (!PyArg_ParseTuple(args, "OOO", &type, &v4, &v6))
        return NULL;
    if (!PyCallable_Check(type) || !PyCallable_Check(v4) || !PyCallable_Check(v6))
        return PyErr_Format(PyExc_TypeError, "configure(tuple_type, address_v4, address_v6) takes three callables");
    Py_XSETREF(tuple_type, Py_NewRef(type));
    Py_XSETREF(address_v4, Py_NewRef(v4));
    Py_XSETREF(address_v6, Py_NewRef(v6));
    Py_RETURN_NONE;
}

/* _uint(buf, span, size): the first size bytes, big-endian; NULL (absent) when shorter */
static PyObject *uint_be(const uint8_t *p, Py_ssize_t len, int size)
{
    if (len < size)
        return NULL;
    unsigned long long v = 0;
    for (int i = 0; i < size; i++)
        v = v << 8 | p[i];
    return PyLong_FromUnsignedLongLong(v);
}

/* the one TCP protoinfo layout ctnetlink._TCP_INFO reads at once */
static const struct { uint16_t off, len, type; } TCP_INFO_HDRS[] = {
    {0, 44, CTA_PROTOINFO_TCP}, {4, 5, 1}, {12, 5, 2}, {20, 5, 3}, {28, 6, 4}, {36, 6, 5},
};

enum { F_ORIG, F_REPLY, F_STATUS, F_TCP_STATE, F_TIMEOUT, F_ID, F_HELPER, F_TCP_FLAGS, F_TCP_FLAGS_REPLY,
       F_LABELS, F_PACKETS, F_MARK, N_FIELDS };

static inline void set(PyObject **f, int i, PyObject *v)
{
    Py_XSETREF(f[i], v);
}

/* the fields of the message at [off, end) of buf, as decode() returns them */
static PyObject *fields_at(const uint8_t *buf, Py_ssize_t off, Py_ssize_t end)
{
    PyObject *f[N_FIELDS] = {NULL};
    int type;
    Py_ssize_t pos = off + HDR_LEN, s, e;
    while (next_attr(buf, &pos, end, &type, &s, &e)) {
        Py_ssize_t n = e - s;
        switch (type) {
        case CTA_TUPLE_ORIG:
        case CTA_TUPLE_REPLY:
            set(f, type == CTA_TUPLE_ORIG ? F_ORIG : F_REPLY, tuple_value(buf, s, e));
            break;
        case CTA_STATUS:
        case CTA_TIMEOUT:
        case CTA_ID:
        case CTA_MARK:
            if (n >= 4)
                set(f, type == CTA_STATUS ? F_STATUS : type == CTA_TIMEOUT ? F_TIMEOUT : type == CTA_ID ? F_ID : F_MARK,
                    PyLong_FromUnsignedLong(be32(buf + s)));
            break;
        case CTA_LABELS:      /* the kernel's bitmap of host-order words: one little-endian integer */
            set(f, F_LABELS, _PyLong_FromByteArray(buf + s, (size_t)n, 1, 0));
            break;
        case CTA_HELP:
            set(f, F_HELPER, Py_NewRef(Py_True));
            break;
        case CTA_PROTOINFO: {
            int laid_out = n == 44;       /* nothing after it: a second nest would be the one read */
            for (size_t i = 0; laid_out && i < sizeof TCP_INFO_HDRS / sizeof TCP_INFO_HDRS[0]; i++)
                laid_out = u16h(buf + s + TCP_INFO_HDRS[i].off) == TCP_INFO_HDRS[i].len &&
                           (u16h(buf + s + TCP_INFO_HDRS[i].off + 2) & NLA_TYPE_MASK) == TCP_INFO_HDRS[i].type;
            if (laid_out) {
                set(f, F_TCP_STATE, PyLong_FromLong(buf[s + 8]));
                set(f, F_TCP_FLAGS, PyLong_FromLong(buf[s + 32]));
                set(f, F_TCP_FLAGS_REPLY, PyLong_FromLong(buf[s + 40]));
                break;
            }
            Py_ssize_t ts, te, vs, ve;
            if (!last_attr(buf, s, e, CTA_PROTOINFO_TCP, &ts, &te))
                break;
            /* each of the three set, to None where absent or short, as the walk does */
            static const int which[3][2] = {{CTA_PROTOINFO_TCP_STATE, F_TCP_STATE},
                                            {CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, F_TCP_FLAGS},
                                            {CTA_PROTOINFO_TCP_FLAGS_REPLY, F_TCP_FLAGS_REPLY}};
            for (int i = 0; i < 3; i++) {
                PyObject *v = last_attr(buf, ts, te, which[i][0], &vs, &ve) ? uint_be(buf + vs, ve - vs, 1) : NULL;
                set(f, which[i][1], v);
            }
            break;
        }
        case CTA_COUNTERS_ORIG:
        case CTA_COUNTERS_REPLY: {
            /* both directions added up; a count absent or short adds 0 */
            Py_ssize_t ps, pe;
            PyObject *v = last_attr(buf, s, e, CTA_COUNTERS_PACKETS, &ps, &pe) ? uint_be(buf + ps, pe - ps, 8) : NULL;
            if (PyErr_Occurred())
                break;
            if (f[F_PACKETS] == NULL)
                f[F_PACKETS] = PyLong_FromLong(0);
            if (v != NULL) {
                if (f[F_PACKETS] != NULL)
                    set(f, F_PACKETS, PyNumber_Add(f[F_PACKETS], v));
                Py_DECREF(v);
            }
            break;
        }
        }
        if (PyErr_Occurred())       /* an allocation failed */
            goto fail;
    }
    if (f[F_HELPER] == NULL)
        f[F_HELPER] = Py_NewRef(Py_False);
    PyObject *out = PyTuple_New(N_FIELDS);
    if (out == NULL)
        goto fail;
    for (int i = 0; i < N_FIELDS; i++)
        PyTuple_SET_ITEM(out, i, f[i] ? f[i] : Py_NewRef(Py_None));
    return out;
fail:
    for (int i = 0; i < N_FIELDS; i++)
        Py_XDECREF(f[i]);
    return NULL;
}

static PyObject *decode(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t off, end;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &off, &end))
        return NULL;
    if (off < 0 || end > view.len || off > end) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "message [%zd, %zd) is not within the %zd bytes given", off, end,
                            view.len);
    }
    PyObject *out = fields_at(view.buf, off, end);
    PyBuffer_Release(&view);
    return out;
}

#define NFNL_SUBSYS_CTNETLINK 1

/* events(data, skip_pid): ctnetlink.CtnlSocket._decode_events in one call: each
 * ctnetlink message of a datagram (its netlink header whole and within it;
 * the walk stops at the first that is not), but those caused by the netlink
 * port skip_pid (0: none), as (msg_type & 0xff, flags, start, end, fields) */
static PyObject *events(PyObject *self, PyObject *args)
{
    Py_buffer view;
    unsigned long skip;
    if (!PyArg_ParseTuple(args, "y*k", &view, &skip))
        return NULL;
    const uint8_t *buf = view.buf;
    Py_ssize_t off = 0, n = view.len;
    PyObject *out = PyList_New(0);
    while (out != NULL && off + HDR_LEN_NL <= n) {
        uint32_t length, pid;
        uint16_t mtype, flags;
        memcpy(&length, buf + off, 4);
        memcpy(&mtype, buf + off + 4, 2);
        memcpy(&flags, buf + off + 6, 2);
        memcpy(&pid, buf + off + 12, 4);
        if (length < HDR_LEN_NL || (Py_ssize_t)length > n - off)
            break;
        if (mtype >> 8 == NFNL_SUBSYS_CTNETLINK && !(skip && pid == skip)) {
            PyObject *fields = fields_at(buf, off, off + (Py_ssize_t)length);
            PyObject *item = fields == NULL ? NULL
                : Py_BuildValue("(iinnN)", mtype & 0xff, flags, off, off + (Py_ssize_t)length, fields);
            if (item == NULL || PyList_Append(out, item) < 0)
                Py_CLEAR(out);
            Py_XDECREF(item);
        }
        off += ((Py_ssize_t)length + 3) & ~(Py_ssize_t)3;
    }
    PyBuffer_Release(&view);
    return out;
}

/* tuple_attr: ipaddress's two types, FlowTuple's (where built), "_ip" */
static PyObject *ipv4_type, *ipv6_type, *str_ip, *tuple_field_names[5];
static PyTypeObject *flowtuple_type;

/* an address's bytes: 4 or 16, 0 where it is not an ipaddress object, -1 on error */
static int address_bytes(PyObject *addr, uint8_t *out)
{
    int len = Py_IS_TYPE(addr, (PyTypeObject *)ipv4_type) ? 4 : Py_IS_TYPE(addr, (PyTypeObject *)ipv6_type) ? 16 : 0;
    if (len == 0)
        return 0;
    PyObject *v = address_int(addr, str_ip);
    if (v == NULL)
        return -1;
    int r = _PyLong_AsByteArray((PyLongObject *)v, out, (size_t)len, 0, 0);
    Py_DECREF(v);
    if (r < 0) {        /* an integer out of its family's range: not for this layout */
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    return len;
}

/* an integer field in [0, max]: its value, -1 where it is out of range or no integer, -2 on error */
static long small_uint(PyObject *v, long max)
{
    if (!PyLong_Check(v))
        return -1;
    int overflow;
    long x = PyLong_AsLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -2;
    return (overflow || x < 0 || x > max) ? -1 : x;
}

static inline void put16h(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, 2);
}

static inline uint8_t *nla_hdr(uint8_t *p, uint16_t len, uint16_t type)
{
    put16h(p, len);
    put16h(p + 2, type);
    return p + 4;
}

static PyObject *tuple_attr(PyObject *self, PyObject *args)
{
    int atype;
    PyObject *t;
    if (!PyArg_ParseTuple(args, "iO", &atype, &t))
        return NULL;
    PyObject *f[5];     /* src, dst, l4proto, sport, dport */
    if (tuple_fields(t, flowtuple_type, tuple_field_names, f) < 0)
        return NULL;
    PyObject *out = NULL;
    uint8_t src[16], dst[16];
    int alen = address_bytes(f[0], src), dlen = alen > 0 ? address_bytes(f[1], dst) : alen;
    long proto = -1, sport = -1, dport = -1;
    if (alen < 0 || dlen < 0)
        goto done;
    if (alen == 0 || dlen != alen)
        goto none;
    if ((proto = small_uint(f[2], 255)) == -2 || (sport = small_uint(f[3], 65535)) == -2
        || (dport = small_uint(f[4], 65535)) == -2)
        goto done;
    if (proto < 0 || sport < 0 || dport < 0)
        goto none;
    uint8_t buf[76] = {0};
    int v6 = alen == 16, ip_len = 4 + 2 * (4 + alen), size = 36 + 2 * (4 + alen);
    uint8_t *p = nla_hdr(buf, (uint16_t)size, (uint16_t)(atype | 0x8000));
    p = nla_hdr(p, (uint16_t)ip_len, CTA_TUPLE_IP | 0x8000);
    p = nla_hdr(p, (uint16_t)(4 + alen), v6 ? CTA_IP_V6_SRC : CTA_IP_V4_SRC);
    memcpy(p, src, alen), p += alen;
    p = nla_hdr(p, (uint16_t)(4 + alen), v6 ? CTA_IP_V6_DST : CTA_IP_V4_DST);
    memcpy(p, dst, alen), p += alen;
    p = nla_hdr(p, 28, CTA_TUPLE_PROTO | 0x8000);
    p = nla_hdr(p, 5, CTA_PROTO_NUM);
    p[0] = (uint8_t)proto, p += 4;
    p = nla_hdr(p, 6, CTA_PROTO_SRC_PORT);
    p[0] = (uint8_t)(sport >> 8), p[1] = (uint8_t)sport, p += 4;
    p = nla_hdr(p, 6, CTA_PROTO_DST_PORT);
    p[0] = (uint8_t)(dport >> 8), p[1] = (uint8_t)dport;
    out = PyBytes_FromStringAndSize((const char *)buf, size);
    goto done;
none:
    out = Py_NewRef(Py_None);
done:
    for (int i = 0; i < 5; i++)
        Py_DECREF(f[i]);
    return out;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(tuple_type, address_v4, address_v6): decode's tuples made as tuple_type(src, dst, l4proto, "
     "sport, dport), each address by its length's constructor from its bytes"},
    {"decode", decode, METH_VARARGS,
     "decode(buf, off, end) -> (orig, reply, status, tcp_state, timeout, id, helper, tcp_flags, "
     "tcp_flags_reply, labels, packets, mark): one ctnetlink message's attributes"},
    {"events", events, METH_VARARGS,
     "events(data, skip_pid) -> [(msg_type, flags, start, end, fields)]: each ctnetlink message of a datagram "
     "but those of netlink port skip_pid (0: none), its fields as decode() gives them"},
    {"tuple_attr", tuple_attr, METH_VARARGS,
     "tuple_attr(atype, t) -> bytes or None: CTA_TUPLE_ORIG/REPLY for t in ctnetlink.tuple_attr's layout; "
     "None where it does not apply"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctnetlink", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ctnetlink(void)
{
    if (intern_tuple_names(&str_ip, tuple_field_names) < 0)
        return NULL;
    if ((ipv4_type = ipaddress_class("IPv4Address")) == NULL || (ipv6_type = ipaddress_class("IPv6Address")) == NULL)
        return NULL;
    flowtuple_type = flowtuple_type_if_built();
    return PyModule_Create(&module);
}
