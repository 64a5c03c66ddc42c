/* kvfast._speedups: the per-record producer work in C (object -> Encoded).
 *
 * Why C against the CPython API rather than Cython: it adds no build
 * dependency (a compiler and the Python headers, which any extension needs;
 * Cython would be one more package in [build-system] and in every sdist
 * build), and the hot path is a handful of type tests and memcpy's that gain
 * nothing from Cython's generated glue.  The Python encoder in encoders.py is
 * the reference: this one must return byte-identical results.
 *
 * Contract (kvfast/encoders.py, Encoded): encode(obj) ->
 *   (key, HSET fields as RESP bulk strings, number of fields, {field: wire value})
 * with the non-nullable fields first in field order, then the present nullable
 * ones in field order, exactly as the generated Python template writes them;
 * a model with indexes (Encoder's index_fields) adds a fifth item, the indexed
 * fields' hash bytes (None for NULL), and the Framer then writes each record's
 * SADDs to its index sets (producer.py's create_pieces).
 *
 * The C code handles only the common case of each field (an exact int in
 * range, an exact str that PostgreSQL can hold, a UTC datetime, ...).  Anything
 * else -- a subclass, a value out of range, a None in a field that is not
 * Optional, an attribute that raises -- hands the whole object to the Python
 * encoder (`fallback`), so a ValidationError carries exactly the Python text
 * and a value that Python normalizes comes out normalized the Python way.
 * Field types that are awkward in C (json, arrays, numeric(p,s), real,
 * interval, PostgreSQL enums) call a small Python function per field,
 * returning (hash bytes, wire value); an exception from it also means
 * "fall back".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    K_INT = 0, K_STR = 1, K_BOOL = 2, K_FLOAT = 3, K_DATETIME_UTC = 4, K_TIMESTAMP = 5,
    K_DATE = 6, K_TIME = 7, K_DECIMAL = 8, K_UUID = 9, K_BYTES = 10, K_ENUM = 11, K_PY = 12,
    K_LAST = K_PY
};

typedef struct {
    PyObject *attr;     /* attribute name (interned str) */
    PyObject *name;     /* key of the wire dict (the field's name) */
    PyObject *prefix;   /* bytes: the field name as a RESP bulk string */
    PyObject *json_name; /* bytes: orjson.dumps(name) + b":" (the entry's JSON) */
    int kind;
    int nullable;
    long long lo, hi;   /* K_INT: range; K_STR: max length (-1: none), pad flag */
    PyObject *extra;    /* K_ENUM: the enum class; K_UUID: uuid.UUID; K_PY: callable */
} FieldPlan;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *cls;
    PyObject *fallback;
    PyObject *wire_template;   /* {name: None, ...} in field order, copied per record */
    PyObject *key_indexes;     /* tuple of int */
    Py_ssize_t nkeys;
    Py_ssize_t *keys;
    Py_ssize_t nfields;
    FieldPlan *fields;
    /* the indexed fields (kvfast.index), in the model's `indexes` order: their
     * hash values are the Encoded tuple's fifth item, one bytes or None each */
    Py_ssize_t nindex;
    Py_ssize_t *index;
} Encoder;

/* One field of one record while it is encoded. */
typedef struct {
    PyObject *v;        /* the attribute value (new ref) */
    PyObject *w;        /* the wire value (new ref), NULL while unset */
    PyObject *own;      /* keeps `p` alive when it points into a temporary (new ref) */
    const char *p;      /* the hash value's bytes */
    Py_ssize_t n;
    char buf[48];
} Slot;

static PyObject *UTC;  /* datetime.timezone.utc */
static PyObject *STR_INT, *STR_VALUE, *STR_NAN, *STR_INF, *STR_NINF;

/* -- small formatters ------------------------------------------------------ */

static char *put2(char *o, int v) { o[0] = '0' + v / 10; o[1] = '0' + v % 10; return o + 2; }

static char *put_date(char *o, int y, int m, int d)
{
    o[0] = '0' + y / 1000; o[1] = '0' + y / 100 % 10; o[2] = '0' + y / 10 % 10;
    o[3] = '0' + y % 10; o[4] = '-';
    o = put2(o + 5, m); *o++ = '-';
    return put2(o, d);
}

static char *put_time(char *o, int h, int mi, int s, int us)
{
    o = put2(o, h); *o++ = ':'; o = put2(o, mi); *o++ = ':'; o = put2(o, s);
    if (us) {  /* isoformat() writes the microseconds only when there are some */
        *o++ = '.';
        for (int i = 5; i >= 0; i--) { o[i] = '0' + us % 10; us /= 10; }
        o += 6;
    }
    return o;
}

/* Decimal digits of u: a record writes a dozen numbers (lengths, counts, ints),
 * most of them one or two digits, so the short ones are tested first. */
static int udigits(unsigned long long u)
{
    if (u < 10) return 1;
    if (u < 100) return 2;
    int d = 3;
    for (u /= 1000; u; u /= 10) d++;
    return d;
}

static const char DIGITS2[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* v in decimal at o (as "%lld"), two digits per division; returns its length. */
static Py_ssize_t put_ll(char *o, long long v)
{
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    Py_ssize_t len = 0;
    if (v < 0) o[len++] = '-';
    if (u < 10) { o[len] = (char)('0' + u); return len + 1; }
    int d = udigits(u);
    char *e = o + len + d;
    while (u >= 100) {
        unsigned r = (unsigned)(u % 100);
        u /= 100;
        e -= 2; e[0] = DIGITS2[2 * r]; e[1] = DIGITS2[2 * r + 1];
    }
    if (u >= 10) { e -= 2; e[0] = DIGITS2[2 * u]; e[1] = DIGITS2[2 * u + 1]; }
    else *--e = (char)('0' + u);
    return len + d;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static PyObject *b64_str(const unsigned char *s, Py_ssize_t n)
{
    if (n > (PY_SSIZE_T_MAX / 4) * 3 - 3) return PyErr_NoMemory();
    Py_ssize_t out = (n + 2) / 3 * 4;
    PyObject *r = PyUnicode_New(out, 127);
    if (!r) return NULL;
    char *o = (char *)PyUnicode_DATA(r);
    Py_ssize_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        *o++ = B64[v >> 18]; *o++ = B64[v >> 12 & 63]; *o++ = B64[v >> 6 & 63]; *o++ = B64[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)s[i] << 16;
        *o++ = B64[v >> 18]; *o++ = B64[v >> 12 & 63]; *o++ = '='; *o++ = '=';
    } else if (n - i == 2) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8;
        *o++ = B64[v >> 18]; *o++ = B64[v >> 12 & 63]; *o++ = B64[v >> 6 & 63]; *o++ = '=';
    }
    return r;
}

/* An ASCII str of `n` bytes from `s`; the slot's hash bytes point into it.
 * Without `wire` (the framer, which writes the entry's JSON from the slot's
 * bytes) no str is made: the text stays in the slot's buffer and the wire
 * value is a None marker (present, not NULL).  n <= 36 here (a UUID). */
static int ascii_wire(Slot *sl, const char *s, Py_ssize_t n, int wire)
{
    if (!wire && n <= (Py_ssize_t)sizeof sl->buf) {
        memcpy(sl->buf, s, (size_t)n);
        sl->p = sl->buf;
        sl->n = n;
        Py_INCREF(Py_None);
        sl->w = Py_None;
        return 0;
    }
    PyObject *w = PyUnicode_New(n, 127);
    if (!w) return -1;
    memcpy(PyUnicode_DATA(w), s, (size_t)n);
    sl->w = w;
    sl->p = (const char *)PyUnicode_DATA(w);
    sl->n = n;
    return 0;
}

/* -- one field: 0 done, 1 fall back to Python, -1 error -------------------- */

static int encode_field(const FieldPlan *f, Slot *sl, int wire)
{
    PyObject *v = sl->v;
    switch (f->kind) {
    case K_INT: {
        if (!PyLong_CheckExact(v)) return 1;
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) return 1;
        if (x == -1 && PyErr_Occurred()) return -1;
        if (x < f->lo || x > f->hi) return 1;
        sl->n = put_ll(sl->buf, x);
        sl->p = sl->buf;
        Py_INCREF(v); sl->w = v;
        return 0;
    }
    case K_STR: {
        if (!PyUnicode_CheckExact(v)) return 1;
        Py_ssize_t n;
        const char *s;
        if (PyUnicode_IS_ASCII(v)) {
            s = (const char *)PyUnicode_DATA(v);
            n = PyUnicode_GET_LENGTH(v);
        } else {
            s = PyUnicode_AsUTF8AndSize(v, &n);
            if (!s) {  /* a lone surrogate: Python's check words the error */
                if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return -1;
                PyErr_Clear();
                return 1;
            }
        }
        if (memchr(s, 0, (size_t)n)) return 1;
        Py_ssize_t chars = PyUnicode_GET_LENGTH(v);
        if (f->lo >= 0 && chars > f->lo) return 1;
        if (f->hi && chars && PyUnicode_READ_CHAR(v, chars - 1) == ' ') return 1;
        sl->p = s; sl->n = n;
        Py_INCREF(v); sl->w = v;
        return 0;
    }
    case K_BOOL:
        if (!PyBool_Check(v)) return 1;
        sl->p = v == Py_True ? "1" : "0"; sl->n = 1;
        Py_INCREF(v); sl->w = v;
        return 0;
    case K_FLOAT: {
        if (!PyFloat_CheckExact(v)) return 1;
        double x = PyFloat_AS_DOUBLE(v);
        /* repr(): what float() reads back exactly */
        char *r = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (!r) return -1;
        size_t n = strlen(r);
        if (n > sizeof sl->buf) { PyMem_Free(r); return 1; }
        memcpy(sl->buf, r, n);
        PyMem_Free(r);
        sl->p = sl->buf; sl->n = (Py_ssize_t)n;
        PyObject *w = v;
        if (x - x != 0.0)  /* NaN and +-Infinity: JSON has neither, spell them */
            w = x != x ? STR_NAN : (x > 0 ? STR_INF : STR_NINF);
        Py_INCREF(w); sl->w = w;
        return 0;
    }
    case K_DATETIME_UTC:
    case K_TIMESTAMP: {
        if (!PyDateTime_CheckExact(v)) return 1;
        PyObject *tz = PyDateTime_DATE_GET_TZINFO(v);
        if (f->kind == K_DATETIME_UTC ? tz != UTC
                : (tz != Py_None || PyDateTime_DATE_GET_FOLD(v))) return 1;
        char t[40], *o = t;
        o = put_date(o, PyDateTime_GET_YEAR(v), PyDateTime_GET_MONTH(v), PyDateTime_GET_DAY(v));
        *o++ = 'T';
        o = put_time(o, PyDateTime_DATE_GET_HOUR(v), PyDateTime_DATE_GET_MINUTE(v),
                     PyDateTime_DATE_GET_SECOND(v), PyDateTime_DATE_GET_MICROSECOND(v));
        if (f->kind == K_DATETIME_UTC) { memcpy(o, "+00:00", 6); o += 6; }
        return ascii_wire(sl, t, o - t, wire);
    }
    case K_DATE: {
        if (!PyDate_CheckExact(v)) return 1;
        char t[16];
        char *o = put_date(t, PyDateTime_GET_YEAR(v), PyDateTime_GET_MONTH(v),
                           PyDateTime_GET_DAY(v));
        return ascii_wire(sl, t, o - t, wire);
    }
    case K_TIME: {
        if (!PyTime_CheckExact(v)) return 1;
        if (PyDateTime_TIME_GET_TZINFO(v) != Py_None || PyDateTime_TIME_GET_FOLD(v)) return 1;
        char t[24];
        char *o = put_time(t, PyDateTime_TIME_GET_HOUR(v), PyDateTime_TIME_GET_MINUTE(v),
                           PyDateTime_TIME_GET_SECOND(v), PyDateTime_TIME_GET_MICROSECOND(v));
        return ascii_wire(sl, t, o - t, wire);
    }
    case K_DECIMAL: {
        if ((PyObject *)Py_TYPE(v) != f->extra) return 1;
        PyObject *s = PyObject_Str(v);
        if (!s) return 1;
        /* Plain notation only (no exponent, NaN or Infinity) and short: then the
         * scale and the integer digits are both under PostgreSQL's limits
         * (16383 and 131072), which is all DecimalType.check asks. */
        Py_ssize_t n = PyUnicode_GET_LENGTH(s);
        if (!PyUnicode_IS_ASCII(s) || n > 16000) { Py_DECREF(s); return 1; }
        const char *c = (const char *)PyUnicode_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++)
            if (!((c[i] >= '0' && c[i] <= '9') || c[i] == '.' || c[i] == '-')) {
                Py_DECREF(s);
                return 1;
            }
        sl->w = s; sl->p = c; sl->n = n;
        return 0;
    }
    case K_UUID: {
        if ((PyObject *)Py_TYPE(v) != f->extra) return 1;
        PyObject *i = PyObject_GetAttr(v, STR_INT);
        if (!i) return 1;
        if (!PyLong_CheckExact(i)) { Py_DECREF(i); return 1; }
        unsigned long long lo = PyLong_AsUnsignedLongLongMask(i);
        PyObject *sixty_four = PyLong_FromLong(64);
        PyObject *h = sixty_four ? PyNumber_Rshift(i, sixty_four) : NULL;
        Py_XDECREF(sixty_four);
        Py_DECREF(i);
        if (!h) return -1;
        unsigned long long hi = PyLong_AsUnsignedLongLong(h);  /* negative or >= 2**128: error */
        Py_DECREF(h);
        if (hi == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
            PyErr_Clear();
            return 1;
        }
        static const char HEX[] = "0123456789abcdef";
        char t[36];
        int pos = 0;
        for (int k = 0; k < 32; k++) {
            if (k == 8 || k == 12 || k == 16 || k == 20) t[pos++] = '-';
            unsigned long long word = k < 16 ? hi : lo;
            t[pos++] = HEX[(word >> (60 - 4 * (k % 16))) & 15];
        }
        return ascii_wire(sl, t, 36, wire);
    }
    case K_BYTES: {
        if (!PyBytes_CheckExact(v)) return 1;
        sl->p = PyBytes_AS_STRING(v); sl->n = PyBytes_GET_SIZE(v);
        sl->w = b64_str((const unsigned char *)sl->p, sl->n);
        return sl->w ? 0 : -1;
    }
    case K_ENUM: {
        if ((PyObject *)Py_TYPE(v) != f->extra) return 1;
        PyObject *w = PyObject_GetAttr(v, STR_VALUE);
        if (!w) return 1;
        if (!PyUnicode_CheckExact(w)) { Py_DECREF(w); return 1; }
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(w, &n);
        if (!s) { Py_DECREF(w); return 1; }
        sl->w = w; sl->p = s; sl->n = n;
        return 0;
    }
    case K_PY: {
        PyObject *r = PyObject_CallOneArg(f->extra, v);
        if (!r) return 1;
        if (!PyTuple_CheckExact(r) || PyTuple_GET_SIZE(r) != 2
                || !PyBytes_CheckExact(PyTuple_GET_ITEM(r, 0))) {
            Py_DECREF(r);
            PyErr_SetString(PyExc_TypeError, "kvfast field encoder must return (bytes, wire)");
            return -1;
        }
        PyObject *h = PyTuple_GET_ITEM(r, 0);
        sl->own = r;
        sl->p = PyBytes_AS_STRING(h); sl->n = PyBytes_GET_SIZE(h);
        sl->w = PyTuple_GET_ITEM(r, 1);
        Py_INCREF(sl->w);
        return 0;
    }
    }
    PyErr_SetString(PyExc_SystemError, "kvfast encoder: bad field kind");
    return -1;
}

/* -- the encoder ----------------------------------------------------------- */

static Py_ssize_t digits(Py_ssize_t n)
{
    return udigits((unsigned long long)n);  /* n >= 0: a length or a count */
}

static char *put_value(char *o, const FieldPlan *f, const Slot *sl)
{
    Py_ssize_t pn = PyBytes_GET_SIZE(f->prefix);
    memcpy(o, PyBytes_AS_STRING(f->prefix), (size_t)pn);
    o += pn;
    *o++ = '$';
    o += put_ll(o, sl->n);
    *o++ = '\r'; *o++ = '\n';
    memcpy(o, sl->p, (size_t)sl->n);
    o += sl->n;
    *o++ = '\r'; *o++ = '\n';
    return o;
}

#define STACK_SLOTS 32

static void release_slots(Slot *slots, Py_ssize_t nf)
{
    for (Py_ssize_t i = 0; i < nf; i++) {
        Py_XDECREF(slots[i].v);
        Py_XDECREF(slots[i].w);
        Py_XDECREF(slots[i].own);
    }
}

/* Read and encode every field of `obj` into `slots` (zeroed, nfields of them);
 * `wire`: the wire values as objects (see ascii_wire).
 * 0: done; 1: hand the object to Python (no exception set); -1: error. */
static int fill_slots(Encoder *self, PyObject *obj, Slot *slots, Py_ssize_t *count,
                      Py_ssize_t *total, int wire)
{
    int fall = 0;
    *count = *total = 0;
    for (Py_ssize_t i = 0; i < self->nfields; i++) {
        const FieldPlan *f = &self->fields[i];
        Slot *sl = &slots[i];
        sl->v = PyObject_GetAttr(obj, f->attr);
        if (!sl->v) { fall = 1; break; }
        if (sl->v == Py_None) {
            if (!f->nullable) { fall = 1; break; }
            continue;
        }
        int rc = encode_field(f, sl, wire);
        if (rc) { fall = rc; break; }
        *total += PyBytes_GET_SIZE(f->prefix) + 1 + digits(sl->n) + 2 + sl->n + 2;
        (*count)++;
    }
    if (fall == 1 && PyErr_Occurred()) {
        /* Only ordinary exceptions mean "a value C does not take": let Python
         * judge the object.  KeyboardInterrupt, SystemExit... propagate. */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
        PyErr_Clear();
    }
    return fall;
}

/* The HSET fields: the template's (non-nullable) ones, then the present optional ones. */
static char *write_fields(const Encoder *self, const Slot *slots, char *o)
{
    for (int pass = 0; pass < 2; pass++)
        for (Py_ssize_t i = 0; i < self->nfields; i++)
            if (self->fields[i].nullable == pass && slots[i].w)
                o = put_value(o, &self->fields[i], &slots[i]);
    return o;
}

static PyObject *key_from_slots(const Encoder *self, const Slot *slots)
{
    if (self->nkeys == 1) {
        PyObject *key = slots[self->keys[0]].v;
        Py_INCREF(key);
        return key;
    }
    PyObject *key = PyTuple_New(self->nkeys);
    if (!key) return NULL;
    for (Py_ssize_t k = 0; k < self->nkeys; k++) {
        PyObject *kv = slots[self->keys[k]].v;
        Py_INCREF(kv);
        PyTuple_SET_ITEM(key, k, kv);
    }
    return key;
}

/* The indexed fields' hash values as the Python encoder returns them: the hash
 * bytes of each, None for a NULL (the slot of a None has no wire value). */
static PyObject *index_values(const Encoder *self, const Slot *slots)
{
    PyObject *t = PyTuple_New(self->nindex);
    if (!t) return NULL;
    for (Py_ssize_t j = 0; j < self->nindex; j++) {
        const Slot *sl = &slots[self->index[j]];
        PyObject *h = sl->w ? PyBytes_FromStringAndSize(sl->p, sl->n) : Py_NewRef(Py_None);
        if (!h) { Py_DECREF(t); return NULL; }
        PyTuple_SET_ITEM(t, j, h);
    }
    return t;
}

static PyObject *encoded_from_slots(const Encoder *self, const Slot *slots, Py_ssize_t count,
                                    Py_ssize_t total)
{
    PyObject *result = NULL, *wire = NULL, *key = NULL, *n = NULL;
    PyObject *hash = PyBytes_FromStringAndSize(NULL, total);
    if (!hash) return NULL;
    write_fields(self, slots, PyBytes_AS_STRING(hash));
    wire = PyDict_Copy(self->wire_template);
    if (!wire) goto done;
    for (Py_ssize_t i = 0; i < self->nfields; i++)
        if (slots[i].w && PyDict_SetItem(wire, self->fields[i].name, slots[i].w) < 0)
            goto done;
    key = key_from_slots(self, slots);
    n = PyLong_FromSsize_t(count);
    if (!key || !n) goto done;
    if (self->nindex) {
        PyObject *ivalues = index_values(self, slots);
        if (!ivalues) goto done;
        result = PyTuple_Pack(5, key, hash, n, wire, ivalues);
        Py_DECREF(ivalues);
    } else {
        result = PyTuple_Pack(4, key, hash, n, wire);
    }
done:
    Py_XDECREF(key);
    Py_XDECREF(n);
    Py_DECREF(hash);
    Py_XDECREF(wire);
    return result;
}

static PyObject *encoder_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames)
{
    Encoder *self = (Encoder *)self_;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "encode() takes exactly one argument");
        return NULL;
    }
    if (!self->fields || !self->cls) {  /* never initialized, or cleared by the collector */
        PyErr_SetString(PyExc_TypeError, "Encoder not initialized");
        return NULL;
    }
    PyObject *obj = args[0];
    if ((PyObject *)Py_TYPE(obj) != self->cls)
        return PyObject_CallOneArg(self->fallback, obj);
    Py_ssize_t nf = self->nfields;
    Slot stack[STACK_SLOTS];
    /* Slots live on this call's stack (or heap): a per-field callback runs Python
     * code, which may switch threads and re-enter this same encoder. */
    Slot *slots = nf <= STACK_SLOTS ? stack : PyMem_Calloc((size_t)nf, sizeof(Slot));
    if (!slots) return PyErr_NoMemory();
    if (slots == stack) memset(slots, 0, sizeof(Slot) * (size_t)nf);
    Py_ssize_t count, total;
    PyObject *result = NULL;
    int rc = fill_slots(self, obj, slots, &count, &total, 1);
    if (rc == 1)
        result = PyObject_CallOneArg(self->fallback, obj);
    else if (rc == 0)
        result = encoded_from_slots(self, slots, count, total);
    release_slots(slots, nf);
    if (slots != stack) PyMem_Free(slots);
    return result;
}

/* -- the queue entry's JSON straight from the slots ------------------------ */

/* Text orjson writes as is between quotes: no control character, quote or
 * backslash (orjson escapes only those; non-ASCII goes out as UTF-8). */
static int json_plain(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\') return 0;
    }
    return 1;
}

typedef struct {
    const char *p;
    Py_ssize_t n;
    int quote;
    PyObject *own;
} JsonPiece;

/* orjson.dumps(wire) for a record the C encoder took: {"name":value,...} in
 * field order.  Values C cannot write exactly as orjson does (floats: orjson's
 * shortest form differs from repr; json and arrays; text needing escapes) are
 * each dumped by orjson itself.  In two steps, so that the framer writes the
 * JSON straight into the queue entry (no bytes object of its own, no copy):
 * json_measure fills `pieces` (zeroed, nfields of them) and returns the JSON's
 * size (-1: error), json_write writes it at `o`; json_release in every case. */
static Py_ssize_t json_measure(const Encoder *self, const Slot *slots, PyObject *dumps,
                               JsonPiece *pieces)
{
    Py_ssize_t nf = self->nfields, total = 2 + (nf - 1);
    for (Py_ssize_t i = 0; i < nf; i++) {
        const FieldPlan *f = &self->fields[i];
        const Slot *sl = &slots[i];
        JsonPiece *jp = &pieces[i];
        PyObject *w = sl->w;
        if (!w) {
            jp->p = "null"; jp->n = 4;
        } else if (f->kind == K_INT) {
            jp->p = sl->p; jp->n = sl->n;  /* the hash text: the digits */
        } else if (f->kind == K_BOOL) {
            jp->p = w == Py_True ? "true" : "false"; jp->n = w == Py_True ? 4 : 5;
        } else if (f->kind == K_DATETIME_UTC || f->kind == K_TIMESTAMP || f->kind == K_DATE
                   || f->kind == K_TIME || f->kind == K_UUID) {
            /* text C wrote itself (ascii_wire: digits, '-', ':', '.', 'T', '+',
             * hex): nothing to escape, no need to scan it */
            jp->p = sl->p; jp->n = sl->n; jp->quote = 1;
        } else if (PyUnicode_CheckExact(w)) {
            Py_ssize_t n;
            const char *s = PyUnicode_AsUTF8AndSize(w, &n);
            if (!s) return -1;
            if (json_plain(s, n)) {
                jp->p = s; jp->n = n; jp->quote = 1;
            }
        }
        if (!jp->p) {
            jp->own = PyObject_CallOneArg(dumps, w);
            if (!jp->own) return -1;
            if (!PyBytes_CheckExact(jp->own)) {
                PyErr_SetString(PyExc_TypeError, "frame(): dumps must return bytes");
                return -1;
            }
            jp->p = PyBytes_AS_STRING(jp->own); jp->n = PyBytes_GET_SIZE(jp->own);
        }
        total += PyBytes_GET_SIZE(f->json_name) + jp->n + 2 * jp->quote;
    }
    return total;
}

static char *json_write(const Encoder *self, const JsonPiece *pieces, char *o)
{
    *o++ = '{';
    for (Py_ssize_t i = 0; i < self->nfields; i++) {
        const JsonPiece *jp = &pieces[i];
        if (i) *o++ = ',';
        Py_ssize_t kn = PyBytes_GET_SIZE(self->fields[i].json_name);
        memcpy(o, PyBytes_AS_STRING(self->fields[i].json_name), (size_t)kn); o += kn;
        if (jp->quote) *o++ = '"';
        memcpy(o, jp->p, (size_t)jp->n); o += jp->n;
        if (jp->quote) *o++ = '"';
    }
    *o++ = '}';
    return o;
}

static void json_release(JsonPiece *pieces, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) Py_CLEAR(pieces[i].own);
}

static void encoder_clear_fields(Encoder *self)
{
    if (self->fields) {
        for (Py_ssize_t i = 0; i < self->nfields; i++) {
            Py_XDECREF(self->fields[i].attr);
            Py_XDECREF(self->fields[i].name);
            Py_XDECREF(self->fields[i].prefix);
            Py_XDECREF(self->fields[i].json_name);
            Py_XDECREF(self->fields[i].extra);
        }
        PyMem_Free(self->fields);
        self->fields = NULL;
    }
    PyMem_Free(self->keys);
    self->keys = NULL;
    PyMem_Free(self->index);
    self->index = NULL;
    self->nindex = 0;
}

static int encoder_traverse(Encoder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cls);
    Py_VISIT(self->fallback);
    Py_VISIT(self->wire_template);
    Py_VISIT(self->key_indexes);
    for (Py_ssize_t i = 0; self->fields && i < self->nfields; i++)
        Py_VISIT(self->fields[i].extra);
    return 0;
}

static int encoder_clear(Encoder *self)
{
    Py_CLEAR(self->cls);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->wire_template);
    Py_CLEAR(self->key_indexes);
    for (Py_ssize_t i = 0; self->fields && i < self->nfields; i++)
        Py_CLEAR(self->fields[i].extra);
    return 0;
}

static void encoder_dealloc(Encoder *self)
{
    PyObject_GC_UnTrack(self);
    encoder_clear(self);
    encoder_clear_fields(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int plan_field(FieldPlan *f, PyObject *spec, Py_ssize_t i)
{
    PyObject *attr, *name, *prefix, *extra, *json_name;
    int kind, nullable;
    long long lo, hi;
    if (!PyTuple_Check(spec) || !PyArg_ParseTuple(spec, "UUSipLLOS", &attr, &name, &prefix,
                                                  &kind, &nullable, &lo, &hi, &extra,
                                                  &json_name)) {
        if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "field plan %zd must be (attr: str, name: str, "
                         "prefix: bytes, kind: int, nullable: bool, lo: int, hi: int, extra, "
                         "json_name: bytes)", i);
        }
        return -1;
    }
    if (kind < 0 || kind > K_LAST) {
        PyErr_Format(PyExc_ValueError, "field plan %zd: kind %d is not a known kind", i, kind);
        return -1;
    }
    if ((kind == K_PY && !PyCallable_Check(extra))
            || ((kind == K_ENUM || kind == K_UUID || kind == K_DECIMAL) && !PyType_Check(extra))) {
        PyErr_Format(PyExc_TypeError, "field plan %zd: extra does not fit kind %d", i, kind);
        return -1;
    }
    Py_INCREF(attr);
    PyUnicode_InternInPlace(&attr);
    f->attr = attr;
    Py_INCREF(name); f->name = name;
    Py_INCREF(prefix); f->prefix = prefix;
    Py_INCREF(json_name); f->json_name = json_name;
    Py_INCREF(extra); f->extra = extra;
    f->kind = kind; f->nullable = nullable; f->lo = lo; f->hi = hi;
    return 0;
}

static int encoder_init(Encoder *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"cls", "fields", "key_indexes", "fallback", "index_fields", NULL};
    PyObject *cls, *fields, *key_indexes, *fallback, *index_fields = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!O|O!:Encoder", kwlist, &cls,
                                     &PyTuple_Type, &fields, &PyTuple_Type, &key_indexes,
                                     &fallback, &PyTuple_Type, &index_fields))
        return -1;
    if (!PyType_Check(cls) || !PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "Encoder(cls: type, fields, key_indexes, fallback: callable)");
        return -1;
    }
    if (self->fields) {
        PyErr_SetString(PyExc_TypeError, "Encoder is initialized once");
        return -1;
    }
    Py_ssize_t nf = PyTuple_GET_SIZE(fields), nk = PyTuple_GET_SIZE(key_indexes);
    if (nf == 0 || nk == 0) {
        PyErr_SetString(PyExc_ValueError, "Encoder needs at least one field and one key index");
        return -1;
    }
    self->fields = PyMem_Calloc((size_t)nf, sizeof(FieldPlan));
    self->keys = PyMem_Calloc((size_t)nk, sizeof(Py_ssize_t));
    if (!self->fields || !self->keys) { encoder_clear_fields(self); PyErr_NoMemory(); return -1; }
    self->nfields = nf;
    self->nkeys = nk;
    for (Py_ssize_t i = 0; i < nf; i++)
        if (plan_field(&self->fields[i], PyTuple_GET_ITEM(fields, i), i) < 0) {
            encoder_clear_fields(self);
            return -1;
        }
    for (Py_ssize_t k = 0; k < nk; k++) {
        Py_ssize_t x = PyLong_AsSsize_t(PyTuple_GET_ITEM(key_indexes, k));
        if (x == -1 && PyErr_Occurred()) { encoder_clear_fields(self); return -1; }
        if (x < 0 || x >= nf || self->fields[x].nullable) {
            encoder_clear_fields(self);
            PyErr_Format(PyExc_ValueError, "key index %zd is not a non-nullable field", x);
            return -1;
        }
        self->keys[k] = x;
    }
    Py_ssize_t ni = index_fields ? PyTuple_GET_SIZE(index_fields) : 0;
    if (ni) {
        self->index = PyMem_Calloc((size_t)ni, sizeof(Py_ssize_t));
        if (!self->index) { encoder_clear_fields(self); PyErr_NoMemory(); return -1; }
        self->nindex = ni;
    }
    for (Py_ssize_t j = 0; j < ni; j++) {
        Py_ssize_t x = PyLong_AsSsize_t(PyTuple_GET_ITEM(index_fields, j));
        if (x == -1 && PyErr_Occurred()) { encoder_clear_fields(self); return -1; }
        if (x < 0 || x >= nf) {
            encoder_clear_fields(self);
            PyErr_Format(PyExc_ValueError, "index field %zd is not a field", x);
            return -1;
        }
        self->index[j] = x;
    }
    PyObject *tmpl = PyDict_New();
    if (!tmpl) { encoder_clear_fields(self); return -1; }
    for (Py_ssize_t i = 0; i < nf; i++)
        if (PyDict_SetItem(tmpl, self->fields[i].name, Py_None) < 0) {
            Py_DECREF(tmpl);
            encoder_clear_fields(self);
            return -1;
        }
    Py_INCREF(cls); self->cls = cls;
    Py_INCREF(fallback); self->fallback = fallback;
    Py_INCREF(key_indexes); self->key_indexes = key_indexes;
    self->wire_template = tmpl;
    self->vectorcall = encoder_call;
    return 0;
}

static PyObject *encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Encoder *self = (Encoder *)type->tp_alloc(type, 0);
    if (self) self->vectorcall = encoder_call;
    return (PyObject *)self;
}

static PyObject *encoder_repr(Encoder *self)
{
    if (!self->cls) return PyUnicode_FromString("<kvfast C encoder (uninitialized)>");
    return PyUnicode_FromFormat("<kvfast C encoder %s, %zd fields>",
                                ((PyTypeObject *)self->cls)->tp_name, self->nfields);
}

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvfast._speedups.Encoder",
    .tp_doc = "Encoder(cls, fields, key_indexes, fallback): obj -> Encoded, in C "
              "(see kvfast/cencoders.py for the plan).",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = encoder_new,
    .tp_init = (initproc)encoder_init,
    .tp_dealloc = (destructor)encoder_dealloc,
    .tp_traverse = (traverseproc)encoder_traverse,
    .tp_clear = (inquiry)encoder_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Encoder, vectorcall),
    .tp_repr = (reprfunc)encoder_repr,
};

/* -- the framer: one record -> (partition, object key, HSET command, queue entry) --
 *
 * WriteBuilder.create_pieces's per-record framing (kvfast/producer.py), in C:
 * the object key is the partition's prefix + the key's text, the partition is
 * crc32(table NUL key) % partitions (ModelInfo.partition_of_bytes), the HSET
 * is "*N $4 HSET $len objkey" + the encoder's fields [+ the write id pair], and
 * the entry is head + wire key + ',"f":' + orjson.dumps(wire) [+ ,"i":"id"] +
 * tail.  A key it does not frame (a tuple: composite keys; a key longer than
 * PostgreSQL indexes, whose error Python words) comes back as (encoded,) for
 * the Python framing to finish.
 */

static uint32_t CRC_TABLE[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        CRC_TABLE[i] = c;
    }
}

/* zlib.crc32's running form: crc32(b, crc32(a)) == crc32(a + b) */
static uint32_t crc_update(uint32_t crc, const unsigned char *s, Py_ssize_t n)
{
    crc = ~crc;
    for (Py_ssize_t i = 0; i < n; i++) crc = CRC_TABLE[(crc ^ s[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *encode, *prefixes, *head, *sep, *tail, *dumps, *write_field;
    /* a model with indexes: per partition, the index set prefixes (a tuple of
     * `nindex` bytes each); NULL without indexes */
    PyObject *index_prefixes;
    Py_ssize_t nindex;
    uint32_t crc_seed;
    Py_ssize_t partitions, max_key;
} Framer;

/* "SADD prefix+value key" in RESP: producer.py's _SADD, one index set member. */
static PyObject *sadd_command(PyObject *prefix, const char *v, Py_ssize_t vn, const char *kb,
                              Py_ssize_t kn)
{
    Py_ssize_t pn = PyBytes_GET_SIZE(prefix), sn = pn + vn;
    Py_ssize_t cn = 15 + digits(sn) + 2 + sn + 2 + 1 + digits(kn) + 2 + kn + 2;
    PyObject *cmd = PyBytes_FromStringAndSize(NULL, cn);
    if (!cmd) return NULL;
    char *o = PyBytes_AS_STRING(cmd);
    memcpy(o, "*3\r\n$4\r\nSADD\r\n$", 15); o += 15;
    o += put_ll(o, sn); *o++ = '\r'; *o++ = '\n';
    memcpy(o, PyBytes_AS_STRING(prefix), (size_t)pn); o += pn;
    memcpy(o, v, (size_t)vn); o += vn;
    *o++ = '\r'; *o++ = '\n'; *o++ = '$';
    o += put_ll(o, kn); *o++ = '\r'; *o++ = '\n';
    memcpy(o, kb, (size_t)kn); o += kn;
    *o++ = '\r'; *o++ = '\n';
    if (o != PyBytes_AS_STRING(cmd) + cn) {
        Py_DECREF(cmd);
        PyErr_SetString(PyExc_SystemError, "kvfast framer: SADD size mismatch");
        return NULL;
    }
    return cmd;
}

/* The record's SADDs (a tuple, in index order; none for a NULL value): from the
 * C slots, or from the Python encoder's fifth item `ivalues`. */
static PyObject *sadd_commands(const Framer *self, Py_ssize_t p, const Encoder *ce,
                               const Slot *slots, PyObject *ivalues, const char *kb,
                               Py_ssize_t kn)
{
    PyObject *prefixes = PyTuple_GET_ITEM(self->index_prefixes, p);
    Py_ssize_t count = 0;
    const char *vp[STACK_SLOTS];
    Py_ssize_t vn[STACK_SLOTS];
    const char **vps = self->nindex <= STACK_SLOTS ? vp
        : PyMem_Calloc((size_t)self->nindex, sizeof(const char *));
    Py_ssize_t *vns = self->nindex <= STACK_SLOTS ? vn
        : PyMem_Calloc((size_t)self->nindex, sizeof(Py_ssize_t));
    PyObject *out = NULL;
    if (!vps || !vns) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t j = 0; j < self->nindex; j++) {
        if (slots) {
            const Slot *sl = &slots[ce->index[j]];
            vps[j] = sl->w ? sl->p : NULL;
            vns[j] = sl->n;
        } else {
            PyObject *h = PyTuple_GET_ITEM(ivalues, j);
            if (h == Py_None) {
                vps[j] = NULL;
            } else if (PyBytes_CheckExact(h)) {
                vps[j] = PyBytes_AS_STRING(h);
                vns[j] = PyBytes_GET_SIZE(h);
            } else {
                PyErr_SetString(PyExc_TypeError, "frame(): index values must be bytes or None");
                goto done;
            }
        }
        count += vps[j] != NULL;
    }
    out = PyTuple_New(count);
    if (!out) goto done;
    for (Py_ssize_t j = 0, k = 0; j < self->nindex; j++) {
        if (!vps[j]) continue;
        PyObject *cmd = sadd_command(PyTuple_GET_ITEM(prefixes, j), vps[j], vns[j], kb, kn);
        if (!cmd) { Py_CLEAR(out); goto done; }
        PyTuple_SET_ITEM(out, k++, cmd);
    }
done:
    if (vps && vps != vp) PyMem_Free(vps);
    if (vns && vns != vn) PyMem_Free(vns);
    return out;
}

/* One framed record (new references): Framer.run files it without building a
 * tuple, frame() returns it as one. */
typedef struct {
    Py_ssize_t p;
    PyObject *obj_key, *command, *entry;
    PyObject *sadds;     /* a model with indexes: the tuple of its SADDs, else NULL */
    PyObject *declined;  /* instead of the above: the Encoded tuple, for Python to frame */
} Framed;

static void framed_release(Framed *fr)
{
    Py_CLEAR(fr->obj_key); Py_CLEAR(fr->command); Py_CLEAR(fr->entry);
    Py_CLEAR(fr->sadds); Py_CLEAR(fr->declined);
}

/* Frame `obj` into `out` (zeroed): 0 framed, 1 declined (out->declined), -1 error. */
static int frame_record(Framer *self, PyObject *obj, PyObject *write_id, Framed *out)
{
    int rc = -1;
    PyObject *enc = NULL, *key = NULL, *key_text = NULL, *wire_key = NULL;
    PyObject *body = NULL, *obj_key = NULL, *command = NULL, *entry = NULL;
    PyObject *fields = NULL, *wire = NULL, *ivalues = NULL;  /* borrowed from enc */
    PyObject *sadds = NULL;
    Py_ssize_t nfields = 0, fn = 0;
    /* The C encoder's own objects skip the Encoded tuple: the fields go straight
     * into the HSET and the slots straight into the entry's JSON. */
    Encoder *ce = Py_TYPE(self->encode) == &EncoderType ? (Encoder *)self->encode : NULL;
    Slot stack[STACK_SLOTS];
    JsonPiece jstack[STACK_SLOTS];
    JsonPiece *jpieces = NULL;
    int wired = 1;
    Slot *slots = NULL;
    Py_ssize_t nslots = 0;
    if (ce && ce->fields && ce->cls && (PyObject *)Py_TYPE(obj) == ce->cls) {
        nslots = ce->nfields;
        slots = nslots <= STACK_SLOTS ? stack : PyMem_Calloc((size_t)nslots, sizeof(Slot));
        if (!slots) { PyErr_NoMemory(); return -1; }
        if (slots == stack) memset(slots, 0, sizeof(Slot) * (size_t)nslots);
        /* a tuple key is always handed back with its Encoded tuple: wire objects */
        wired = ce->nkeys > 1;
        int filled = fill_slots(ce, obj, slots, &nfields, &fn, wired);
        if (filled < 0) goto done;
        if (filled == 1) {
            release_slots(slots, nslots);
            if (slots != stack) PyMem_Free(slots);
            slots = NULL;
            enc = PyObject_CallOneArg(ce->fallback, obj);
            if (!enc) goto done;
        } else {
            key = key_from_slots(ce, slots);
            if (!key) goto done;
        }
    } else {
        enc = PyObject_CallOneArg(self->encode, obj);
        if (!enc) goto done;
    }
    if (!slots) {
        if (!PyTuple_CheckExact(enc) || PyTuple_GET_SIZE(enc) != 4 + !!self->nindex
                || !PyBytes_CheckExact(fields = PyTuple_GET_ITEM(enc, 1))
                || !PyLong_CheckExact(PyTuple_GET_ITEM(enc, 2))
                || (self->nindex && (!PyTuple_CheckExact(ivalues = PyTuple_GET_ITEM(enc, 4))
                                     || PyTuple_GET_SIZE(ivalues) != self->nindex))) {
            PyErr_SetString(PyExc_TypeError, self->nindex
                            ? "frame(): the encoder must return (key, bytes, int, wire, "
                              "index values)"
                            : "frame(): the encoder must return (key, bytes, int, wire)");
            goto done;
        }
        key = PyTuple_GET_ITEM(enc, 0);
        Py_INCREF(key);
        wire = PyTuple_GET_ITEM(enc, 3);
        fn = PyBytes_GET_SIZE(fields);
        nfields = PyLong_AsSsize_t(PyTuple_GET_ITEM(enc, 2));
        if (nfields < 0 || nfields > PY_SSIZE_T_MAX / 4) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "frame(): bad field count");
            goto done;
        }
    }
    const char *kb, *wkb;  /* the key's text; its JSON (wire key) */
    Py_ssize_t kn, wkn;
    char digits_buf[24];
    if (PyLong_CheckExact(key)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(key, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            goto decline;
        }
        kn = put_ll(digits_buf, x);
        kb = digits_buf;
        wkb = kb; wkn = kn;  /* an int key's JSON is its digits */
    } else if (PyTuple_Check(key)) {
        goto decline;
    } else {
        key_text = PyUnicode_CheckExact(key) ? (Py_INCREF(key), key) : PyObject_Str(key);
        if (!key_text) goto done;
        kb = PyUnicode_AsUTF8AndSize(key_text, &kn);
        if (!kb) goto done;
        if (kn > self->max_key) goto decline;
        wire_key = PyObject_CallOneArg(self->dumps, key_text);
        if (!wire_key) goto done;
        if (!PyBytes_CheckExact(wire_key)) {
            PyErr_SetString(PyExc_TypeError, "frame(): dumps must return bytes");
            goto done;
        }
        wkb = PyBytes_AS_STRING(wire_key); wkn = PyBytes_GET_SIZE(wire_key);
    }
    uint32_t crc = crc_update(self->crc_seed, (const unsigned char *)kb, kn);
    Py_ssize_t p = (Py_ssize_t)(crc % (uint32_t)self->partitions);
    PyObject *prefix = PyTuple_GET_ITEM(self->prefixes, p);
    Py_ssize_t pn = PyBytes_GET_SIZE(prefix), on = pn + kn;
    obj_key = PyBytes_FromStringAndSize(NULL, on);
    if (!obj_key) goto done;
    memcpy(PyBytes_AS_STRING(obj_key), PyBytes_AS_STRING(prefix), (size_t)pn);
    memcpy(PyBytes_AS_STRING(obj_key) + pn, kb, (size_t)kn);

    Py_ssize_t wn = 0, wfn = 0;
    Py_ssize_t argc = 2 + 2 * nfields;
    if (write_id) {
        argc += 2;
        wn = PyBytes_GET_SIZE(write_id);
        wfn = PyBytes_GET_SIZE(self->write_field);
    }
    Py_ssize_t cn = 1 + digits(argc) + 2 + 10 + 1 + digits(on) + 2 + on + 2 + fn;
    if (write_id) cn += 1 + digits(wfn) + 2 + wfn + 2 + 1 + digits(wn) + 2 + wn + 2;
    command = PyBytes_FromStringAndSize(NULL, cn);
    if (!command) goto done;
    char *o = PyBytes_AS_STRING(command);
    *o++ = '*'; o += put_ll(o, argc);
    memcpy(o, "\r\n$4\r\nHSET\r\n$", 13); o += 13;
    o += put_ll(o, on); *o++ = '\r'; *o++ = '\n';
    memcpy(o, PyBytes_AS_STRING(obj_key), (size_t)on); o += on;
    *o++ = '\r'; *o++ = '\n';
    if (slots) {
        o = write_fields(ce, slots, o);
    } else {
        memcpy(o, PyBytes_AS_STRING(fields), (size_t)fn); o += fn;
    }
    if (write_id) {
        *o++ = '$'; o += put_ll(o, wfn); *o++ = '\r'; *o++ = '\n';
        memcpy(o, PyBytes_AS_STRING(self->write_field), (size_t)wfn); o += wfn;
        *o++ = '\r'; *o++ = '\n';
        *o++ = '$'; o += put_ll(o, wn); *o++ = '\r'; *o++ = '\n';
        memcpy(o, PyBytes_AS_STRING(write_id), (size_t)wn); o += wn;
        *o++ = '\r'; *o++ = '\n';
    }
    if (o != PyBytes_AS_STRING(command) + cn) {  /* the size arithmetic above, kept honest */
        PyErr_SetString(PyExc_SystemError, "kvfast framer: HSET size mismatch");
        goto done;
    }
    Py_ssize_t bn;
    if (slots) {  /* the JSON goes straight into the entry below */
        jpieces = nslots <= STACK_SLOTS ? jstack : PyMem_Calloc((size_t)nslots, sizeof(JsonPiece));
        if (!jpieces) { PyErr_NoMemory(); goto done; }
        if (jpieces == jstack) memset(jpieces, 0, sizeof(JsonPiece) * (size_t)nslots);
        bn = json_measure(ce, slots, self->dumps, jpieces);
        if (bn < 0) goto done;
    } else {
        body = PyObject_CallOneArg(self->dumps, wire);
        if (!body) goto done;
        if (!PyBytes_CheckExact(body)) {
            PyErr_SetString(PyExc_TypeError, "frame(): dumps must return bytes");
            goto done;
        }
        bn = PyBytes_GET_SIZE(body);
    }
    Py_ssize_t hn = PyBytes_GET_SIZE(self->head), sn = PyBytes_GET_SIZE(self->sep);
    Py_ssize_t tn = PyBytes_GET_SIZE(self->tail);
    Py_ssize_t en = hn + wkn + sn + bn + tn + (write_id ? 6 + wn + 1 : 0);
    entry = PyBytes_FromStringAndSize(NULL, en);
    if (!entry) goto done;
    o = PyBytes_AS_STRING(entry);
    memcpy(o, PyBytes_AS_STRING(self->head), (size_t)hn); o += hn;
    memcpy(o, wkb, (size_t)wkn); o += wkn;
    memcpy(o, PyBytes_AS_STRING(self->sep), (size_t)sn); o += sn;
    if (jpieces) {
        char *json = o;
        o = json_write(ce, jpieces, o);
        if (o != json + bn) {
            PyErr_SetString(PyExc_SystemError, "kvfast framer: JSON size mismatch");
            goto done;
        }
    } else {
        memcpy(o, PyBytes_AS_STRING(body), (size_t)bn); o += bn;
    }
    if (write_id) {  /* codec.mark */
        memcpy(o, ",\"i\":\"", 6); o += 6;
        memcpy(o, PyBytes_AS_STRING(write_id), (size_t)wn); o += wn;
        *o++ = '"';
    }
    memcpy(o, PyBytes_AS_STRING(self->tail), (size_t)tn);
    if (o + tn != PyBytes_AS_STRING(entry) + en) {
        PyErr_SetString(PyExc_SystemError, "kvfast framer: entry size mismatch");
        goto done;
    }
    if (self->nindex) {
        /* In the same MULTI as the HSET, on the object's slot (create_pieces). */
        sadds = sadd_commands(self, p, ce, slots, ivalues, kb, kn);
        if (!sadds) goto done;
    }
    out->p = p;
    out->obj_key = obj_key; obj_key = NULL;
    out->command = command; command = NULL;
    out->entry = entry; entry = NULL;
    out->sadds = sadds; sadds = NULL;
    rc = 0;
    goto done;

decline:
    if (slots) {
        int again = 0;
        if (!wired) {  /* the Encoded tuple needs the wire values as objects: read again */
            release_slots(slots, nslots);
            memset(slots, 0, sizeof(Slot) * (size_t)nslots);
            again = fill_slots(ce, obj, slots, &nfields, &fn, 1);
            if (again < 0) goto done;
        }
        enc = again ? PyObject_CallOneArg(ce->fallback, obj)
                    : encoded_from_slots(ce, slots, nfields, fn);
        if (!enc) goto done;
    }
    out->declined = enc; enc = NULL;
    rc = 1;
done:
    Py_XDECREF(key);
    Py_XDECREF(key_text);
    Py_XDECREF(wire_key);
    Py_XDECREF(body);
    Py_XDECREF(obj_key);
    Py_XDECREF(command);
    Py_XDECREF(entry);
    Py_XDECREF(sadds);
    Py_XDECREF(enc);
    if (jpieces) {
        json_release(jpieces, nslots);
        if (jpieces != jstack) PyMem_Free(jpieces);
    }
    if (slots) {
        release_slots(slots, nslots);
        if (slots != stack) PyMem_Free(slots);
    }
    return rc;
}

static PyObject *framer_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || nargs > 2 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "frame(obj, write_id=None)");
        return NULL;
    }
    PyObject *write_id = nargs == 2 && args[1] != Py_None ? args[1] : NULL;
    if (write_id && !PyBytes_Check(write_id)) {
        PyErr_SetString(PyExc_TypeError, "frame(): write_id must be bytes or None");
        return NULL;
    }
    Framed fr = {0};
    int rc = frame_record((Framer *)self_, args[0], write_id, &fr);
    PyObject *result = NULL;
    if (rc == 1) {
        result = PyTuple_Pack(1, fr.declined);
    } else if (rc == 0) {
        PyObject *pp = PyLong_FromSsize_t(fr.p);
        if (pp)
            result = fr.sadds ? PyTuple_Pack(5, pp, fr.obj_key, fr.command, fr.entry, fr.sadds)
                              : PyTuple_Pack(4, pp, fr.obj_key, fr.command, fr.entry);
        Py_XDECREF(pp);
    }
    framed_release(&fr);
    return result;
}

static int framer_traverse(Framer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->encode);
    Py_VISIT(self->dumps);
    return 0;
}

static int framer_clear(Framer *self)
{
    Py_CLEAR(self->encode); Py_CLEAR(self->prefixes); Py_CLEAR(self->head);
    Py_CLEAR(self->sep); Py_CLEAR(self->tail); Py_CLEAR(self->dumps);
    Py_CLEAR(self->write_field);
    Py_CLEAR(self->index_prefixes);
    return 0;
}

static void framer_dealloc(Framer *self)
{
    PyObject_GC_UnTrack(self);
    framer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject FramerType;

static PyObject *framer_vectorcall_guard(PyObject *self, PyObject *const *args, size_t nargsf,
                                         PyObject *kwnames)
{
    if (!((Framer *)self)->encode) {
        PyErr_SetString(PyExc_TypeError, "Framer not initialized");
        return NULL;
    }
    return framer_call(self, args, nargsf, kwnames);
}

static int framer_init(Framer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"encode", "crc_prefix", "partitions", "prefixes", "head", "sep",
                             "tail", "dumps", "max_key", "write_field", "index_prefixes", NULL};
    PyObject *encode, *prefixes, *head, *sep, *tail, *dumps, *write_field;
    PyObject *index_prefixes = Py_None;
    Py_buffer crc_prefix;
    Py_ssize_t partitions, max_key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oy*nO!SSSOnS|O:Framer", kwlist, &encode,
                                     &crc_prefix, &partitions, &PyTuple_Type, &prefixes, &head,
                                     &sep, &tail, &dumps, &max_key, &write_field,
                                     &index_prefixes))
        return -1;
    uint32_t seed = crc_update(0, crc_prefix.buf, crc_prefix.len);
    PyBuffer_Release(&crc_prefix);
    if (partitions < 1 || partitions > 0xFFFFFFFF || PyTuple_GET_SIZE(prefixes) != partitions) {
        PyErr_SetString(PyExc_ValueError, "Framer: partitions must be >= 1 and match prefixes");
        return -1;
    }
    for (Py_ssize_t i = 0; i < partitions; i++)
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(prefixes, i))) {
            PyErr_SetString(PyExc_TypeError, "Framer: prefixes must be bytes");
            return -1;
        }
    if (!PyCallable_Check(encode) || !PyCallable_Check(dumps) || max_key < 0) {
        PyErr_SetString(PyExc_TypeError, "Framer: encode and dumps must be callable");
        return -1;
    }
    if (self->encode) {
        PyErr_SetString(PyExc_TypeError, "Framer is initialized once");
        return -1;
    }
    /* index_prefixes: None, or per partition a tuple of bytes, one per index (as
     * many as the C encoder's indexed fields) */
    Py_ssize_t nindex = 0;
    if (index_prefixes != Py_None) {
        if (!PyTuple_CheckExact(index_prefixes) || PyTuple_GET_SIZE(index_prefixes) != partitions) {
            PyErr_SetString(PyExc_TypeError, "Framer: index_prefixes must be None or a tuple "
                                             "per partition");
            return -1;
        }
        for (Py_ssize_t i = 0; i < partitions; i++) {
            PyObject *t = PyTuple_GET_ITEM(index_prefixes, i);
            if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) == 0
                    || (i && PyTuple_GET_SIZE(t) != nindex)) {
                PyErr_SetString(PyExc_TypeError, "Framer: index_prefixes must hold one "
                                                 "non-empty tuple of bytes per partition, "
                                                 "all of one length");
                return -1;
            }
            nindex = PyTuple_GET_SIZE(t);
            for (Py_ssize_t j = 0; j < nindex; j++)
                if (!PyBytes_CheckExact(PyTuple_GET_ITEM(t, j))) {
                    PyErr_SetString(PyExc_TypeError, "Framer: index prefixes must be bytes");
                    return -1;
                }
        }
    }
    if (Py_TYPE(encode) == &EncoderType && ((Encoder *)encode)->nindex != nindex) {
        PyErr_Format(PyExc_ValueError, "Framer: %zd index prefixes per partition for an "
                     "encoder of %zd indexed fields", nindex, ((Encoder *)encode)->nindex);
        return -1;
    }
    if (nindex) { Py_INCREF(index_prefixes); self->index_prefixes = index_prefixes; }
    self->nindex = nindex;
    Py_INCREF(encode); self->encode = encode;
    Py_INCREF(prefixes); self->prefixes = prefixes;
    Py_INCREF(head); self->head = head;
    Py_INCREF(sep); self->sep = sep;
    Py_INCREF(tail); self->tail = tail;
    Py_INCREF(dumps); self->dumps = dumps;
    Py_INCREF(write_field); self->write_field = write_field;
    self->crc_seed = seed;
    self->partitions = partitions;
    self->max_key = max_key;
    return 0;
}

static PyObject *framer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Framer *self = (Framer *)type->tp_alloc(type, 0);
    if (self) self->vectorcall = framer_vectorcall_guard;
    return (PyObject *)self;
}

/* Framer.run: WriteBuilder.create_pieces's loop over records, in C.
 *
 * run(it, limit, id_prefix, serial, commands, piece_keys, seen, entries)
 *     -> (count, serial, rest)
 *
 * Frames up to ``limit`` records taken from the iterator ``it`` and files each
 * one as the Python loop does: a key already in ``seen`` (this piece) gets its
 * own "DEL key" command first, a new one goes into ``seen`` and ``piece_keys``
 * (the piece's one DEL); the HSET goes to ``commands`` and the entry to
 * ``entries[partition]`` (a list, in record order).  With ``id_prefix`` (bytes:
 * a TTL'd model) each record's write id is id_prefix + hex(serial), serial
 * counting up, as ``b"%b%x" % (id_prefix, serial)``.  ``count`` is how many
 * records were filed; ``rest`` is None, or (obj, write_id, (encoded,)) for a
 * record the framer declined (Python frames and files it, then calls run
 * again).  count < limit with rest None: the iterator is exhausted.
 *
 * Why: that loop was ~4,400 of the ~11,700 instructions a booking cost with
 * the C framer (callgrind, tools/encode_bookings.py batch).
 */
static PyObject *framer_run(PyObject *self_, PyObject *const *args, Py_ssize_t nargs)
{
    Framer *self = (Framer *)self_;
    if (nargs != 8 || !PyIter_Check(args[0]) || !PyList_CheckExact(args[4])
            || !PyList_CheckExact(args[5]) || !PySet_CheckExact(args[6])
            || !PyDict_CheckExact(args[7]) || (args[2] != Py_None && !PyBytes_CheckExact(args[2]))) {
        PyErr_SetString(PyExc_TypeError, "run(it, limit, id_prefix: bytes | None, serial, "
                                         "commands: list, piece_keys: list, seen: set, "
                                         "entries: dict)");
        return NULL;
    }
    if (!self->encode) {
        PyErr_SetString(PyExc_TypeError, "Framer not initialized");
        return NULL;
    }
    PyObject *it = args[0], *id_prefix = args[2] == Py_None ? NULL : args[2];
    PyObject *commands = args[4], *piece_keys = args[5], *seen = args[6], *entries = args[7];
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    unsigned long long serial = PyLong_AsUnsignedLongLong(args[3]);
    if (serial == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Py_ssize_t count = 0;
    PyObject *rest = NULL;
    while (count < limit) {
        PyObject *obj = PyIter_Next(it);
        if (!obj) {
            if (PyErr_Occurred()) return NULL;
            break;
        }
        PyObject *write_id = NULL;
        if (id_prefix) {
            char hex[17];
            int hn = snprintf(hex, sizeof hex, "%llx", serial++);
            Py_ssize_t ipn = PyBytes_GET_SIZE(id_prefix);
            write_id = PyBytes_FromStringAndSize(NULL, ipn + hn);
            if (!write_id) { Py_DECREF(obj); return NULL; }
            memcpy(PyBytes_AS_STRING(write_id), PyBytes_AS_STRING(id_prefix), (size_t)ipn);
            memcpy(PyBytes_AS_STRING(write_id) + ipn, hex, (size_t)hn);
        }
        Framed fr = {0};
        int rc = frame_record(self, obj, write_id, &fr);
        if (rc < 0) { Py_DECREF(obj); Py_XDECREF(write_id); return NULL; }
        if (rc == 1) {
            PyObject *declined = PyTuple_Pack(1, fr.declined);
            rest = declined ? PyTuple_Pack(3, obj, write_id ? write_id : Py_None, declined)
                            : NULL;
            Py_XDECREF(declined);
            Py_DECREF(obj); Py_XDECREF(write_id); framed_release(&fr);
            if (!rest) return NULL;
            break;
        }
        Py_DECREF(obj);
        Py_XDECREF(write_id);
        PyObject *obj_key = fr.obj_key, *p = NULL;
        /* one set operation: the set grows unless the key is already in this piece */
        Py_ssize_t known = PySet_GET_SIZE(seen);
        if (PySet_Add(seen, obj_key) < 0) goto fail;
        if (PySet_GET_SIZE(seen) == known) {  /* a key repeated in the piece: its own DEL first */
            Py_ssize_t kn = PyBytes_GET_SIZE(obj_key);
            PyObject *del = PyBytes_FromStringAndSize(NULL, 14 + digits(kn) + 2 + kn + 2);
            if (!del) goto fail;
            char *o = PyBytes_AS_STRING(del);
            memcpy(o, "*2\r\n$3\r\nDEL\r\n$", 14); o += 14;
            o += put_ll(o, kn); *o++ = '\r'; *o++ = '\n';
            memcpy(o, PyBytes_AS_STRING(obj_key), (size_t)kn); o += kn;
            *o++ = '\r'; *o = '\n';
            int added = PyList_Append(commands, del);
            Py_DECREF(del);
            if (added < 0) goto fail;
        } else if (PyList_Append(piece_keys, obj_key) < 0) {
            goto fail;
        }
        if (PyList_Append(commands, fr.command) < 0) goto fail;
        if (fr.sadds)  /* a model with indexes: its SADDs next, in the same MULTI */
            for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(fr.sadds); j++)
                if (PyList_Append(commands, PyTuple_GET_ITEM(fr.sadds, j)) < 0) goto fail;
        p = PyLong_FromSsize_t(fr.p);
        if (!p) goto fail;
        PyObject *queue = PyDict_GetItemWithError(entries, p);  /* borrowed */
        if (queue) {
            if (!PyList_CheckExact(queue)) {
                PyErr_SetString(PyExc_TypeError, "run(): entries must map to lists");
                goto fail;
            }
            if (PyList_Append(queue, fr.entry) < 0) goto fail;
        } else {
            if (PyErr_Occurred()) goto fail;
            PyObject *fresh = PyList_New(1);
            if (!fresh) goto fail;
            Py_INCREF(fr.entry);
            PyList_SET_ITEM(fresh, 0, fr.entry);
            int set = PyDict_SetItem(entries, p, fresh);
            Py_DECREF(fresh);
            if (set < 0) goto fail;
        }
        Py_DECREF(p);
        framed_release(&fr);
        count++;
        continue;
fail:
        Py_XDECREF(p);
        framed_release(&fr);
        return NULL;
    }
    PyObject *out = Py_BuildValue("(nKO)", count, serial, rest ? rest : Py_None);
    Py_XDECREF(rest);
    return out;
}

static PyMethodDef framer_methods[] = {
    {"run", (PyCFunction)(void (*)(void))framer_run, METH_FASTCALL,
     "run(it, limit, id_prefix, serial, commands, piece_keys, seen, entries) -> "
     "(count, serial, rest): frame and file up to limit records (see kvfast/_speedups.c)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FramerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvfast._speedups.Framer",
    .tp_doc = "Framer(encode, crc_prefix, partitions, prefixes, head, sep, tail, dumps, "
              "max_key, write_field): obj[, write_id] -> (partition, object key, HSET, entry) "
              "or (encoded,) for Python to frame.",
    .tp_basicsize = sizeof(Framer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = framer_new,
    .tp_init = (initproc)framer_init,
    .tp_dealloc = (destructor)framer_dealloc,
    .tp_traverse = (traverseproc)framer_traverse,
    .tp_clear = (inquiry)framer_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Framer, vectorcall),
    .tp_methods = framer_methods,
};

/* -- RESP commands: hiredis.pack_command for bytes and str arguments ------------
 *
 * hiredis's pack_command cost ~3,700 instructions per booking in a create batch
 * (callgrind: the DEL of each piece's keys and the RPUSH of its entries), most
 * of it per argument.  This writes the same bytes for arguments that are exact
 * bytes or str (str as UTF-8); any other argument (ints, floats, a str with a
 * lone surrogate...) hands the whole command to `fallback` (hiredis), so its
 * result or its error is hiredis's own.
 */
static PyObject *pack_command(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "pack_command(fallback, args: tuple)");
        return NULL;
    }
    PyObject *fallback = args[0], *cmd = args[1];
    Py_ssize_t n = PyTuple_GET_SIZE(cmd), total = 1 + digits(n) + 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyTuple_GET_ITEM(cmd, i);
        Py_ssize_t len;
        if (PyBytes_CheckExact(a)) {
            len = PyBytes_GET_SIZE(a);
        } else if (PyUnicode_CheckExact(a)) {
            if (!PyUnicode_AsUTF8AndSize(a, &len)) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return NULL;
                PyErr_Clear();
                return PyObject_CallOneArg(fallback, cmd);
            }
        } else {
            return PyObject_CallOneArg(fallback, cmd);
        }
        total += 1 + digits(len) + 2 + len + 2;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) return NULL;
    char *o = PyBytes_AS_STRING(out);
    *o++ = '*'; o += put_ll(o, n); *o++ = '\r'; *o++ = '\n';
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyTuple_GET_ITEM(cmd, i);
        const char *p;
        Py_ssize_t len;
        if (PyBytes_CheckExact(a)) {
            p = PyBytes_AS_STRING(a); len = PyBytes_GET_SIZE(a);
        } else {
            p = PyUnicode_AsUTF8AndSize(a, &len);  /* cached by the first pass */
        }
        *o++ = '$'; o += put_ll(o, len); *o++ = '\r'; *o++ = '\n';
        memcpy(o, p, (size_t)len); o += len;
        *o++ = '\r'; *o++ = '\n';
    }
    return out;
}

/* kvfast/_copyrows.c: the drainer's create entry -> COPY row */
int kv_copyrows_add(PyObject *m);

static PyMethodDef module_methods[] = {
    {"pack_command", (PyCFunction)(void (*)(void))pack_command, METH_FASTCALL,
     "pack_command(fallback, args): hiredis.pack_command(args) for bytes/str arguments."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kvfast._speedups",
    "kvfast's C paths (see kvfast/impl.py for how they are chosen).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    UTC = PyDateTime_TimeZone_UTC;
    STR_INT = PyUnicode_InternFromString("int");
    STR_VALUE = PyUnicode_InternFromString("value");
    STR_NAN = PyUnicode_InternFromString("NaN");
    STR_INF = PyUnicode_InternFromString("Infinity");
    STR_NINF = PyUnicode_InternFromString("-Infinity");
    if (!STR_INT || !STR_VALUE || !STR_NAN || !STR_INF || !STR_NINF) return NULL;
    crc_init();
    if (PyType_Ready(&EncoderType) < 0 || PyType_Ready(&FramerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&FramerType);
    if (PyModule_AddObject(m, "Framer", (PyObject *)&FramerType) < 0) {
        Py_DECREF(&FramerType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "K_INT", K_INT) < 0 || PyModule_AddIntConstant(m, "K_STR", K_STR) < 0
        || PyModule_AddIntConstant(m, "K_BOOL", K_BOOL) < 0
        || PyModule_AddIntConstant(m, "K_FLOAT", K_FLOAT) < 0
        || PyModule_AddIntConstant(m, "K_DATETIME_UTC", K_DATETIME_UTC) < 0
        || PyModule_AddIntConstant(m, "K_TIMESTAMP", K_TIMESTAMP) < 0
        || PyModule_AddIntConstant(m, "K_DATE", K_DATE) < 0
        || PyModule_AddIntConstant(m, "K_TIME", K_TIME) < 0
        || PyModule_AddIntConstant(m, "K_DECIMAL", K_DECIMAL) < 0
        || PyModule_AddIntConstant(m, "K_UUID", K_UUID) < 0
        || PyModule_AddIntConstant(m, "K_BYTES", K_BYTES) < 0
        || PyModule_AddIntConstant(m, "K_ENUM", K_ENUM) < 0
        || PyModule_AddIntConstant(m, "K_PY", K_PY) < 0 || kv_copyrows_add(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
