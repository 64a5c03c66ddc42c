/* kvfast._speedups, the drainer half: a create entry's JSON -> one binary COPY row.
 *
 * create_row(raw, codecs) parses one queue entry (kvfast/codec.py's format)
 * and, when it is a create of a table in ``codecs`` (table name bytes ->
 * RowCodec) whose every field C can take, returns
 *
 *     (codec, key, row, write time, mark id or None)
 *
 * where ``row`` is the tuple as PostgreSQL's binary COPY wants it: int16 field
 * count, then per field an int32 length (-1 for NULL) and the value in the
 * type's binary send format, network byte order -- exactly the bytes psycopg's
 * ``Copy.write_row`` writes for the row the Python decoder (kvfast/decoders.py)
 * makes of the same entry.  kvfast/crows.py builds the codecs; kvfast/batch.py
 * folds the rows per key.
 *
 * Anything else returns None and the entry goes the Python way
 * (codec.parse, codec.check, the generated row decoder): another op, another
 * model version, a field missing or unknown, NULL in a field that is not
 * Optional, a value out of range or not in its canonical wire form, any JSON
 * this parser is not sure orjson reads the same way (escapes in a name,
 * exponents in a skipped number, nesting deeper than 64 ...).  So an entry C
 * refuses becomes exactly what the Python path makes of it: its row, or the
 * DecodeError / dead letter with the Python wording.  C never raises for bad
 * data: an exception out of create_row is a bug (or MemoryError).
 *
 * The JSON is untrusted (it came over the network): every read is bounded by
 * the end of the buffer, and strings are checked to be valid UTF-8 (orjson
 * refuses invalid UTF-8, lone surrogates and raw control characters: C falls
 * back on them rather than guess).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Row field kinds: the values of kvfast/crows.py's R_* constants. */
enum {
    R_INT = 0, R_STR = 1, R_BOOL = 2, R_FLOAT8 = 3, R_TSTZ = 4, R_TS = 5, R_DATE = 6,
    R_TIME = 7, R_UUID = 8, R_BYTEA = 9, R_ENUM = 10, R_PY = 11, R_LAST = R_PY
};

typedef struct {
    PyObject *name;        /* bytes: the field's name as it appears in the entry */
    int kind;
    int nullable;
    long long lo, hi;      /* R_INT: the column's range */
    int width;             /* R_INT: 2, 4 or 8 bytes */
    Py_ssize_t length;     /* R_STR: max characters, -1 for none */
    int pad;               /* R_STR: character(n): trailing spaces dropped */
    PyObject *extra;       /* R_ENUM: frozenset of labels; R_PY: callable(value JSON) */
} RowField;

typedef struct {
    PyObject_HEAD
    PyObject *info;        /* the ModelInfo (batch.py checks it is still the registered one) */
    PyObject *mv;          /* bytes: the model version as orjson writes it, quotes included */
    Py_ssize_t nf;
    RowField *fields;
    Py_ssize_t key_index;  /* the (single) key field */
    int key_str;           /* the key is text (else an int) */
} RowCodec;

/* -- a growable output buffer -------------------------------------------------- */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    char stack[1024];
} Buf;

static void buf_init(Buf *b) { b->p = b->stack; b->len = 0; b->cap = sizeof b->stack; }
static void buf_free(Buf *b) { if (b->p != b->stack) PyMem_Free(b->p); }

/* Room for n more bytes; -1 (MemoryError set) when out of memory. */
static int buf_need(Buf *b, Py_ssize_t n)
{
    if (b->len + n <= b->cap) return 0;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + n) cap *= 2;
    char *p = PyMem_Malloc((size_t)cap);
    if (!p) { PyErr_NoMemory(); return -1; }
    memcpy(p, b->p, (size_t)b->len);
    if (b->p != b->stack) PyMem_Free(b->p);
    b->p = p;
    b->cap = cap;
    return 0;
}

static void put_be(char *o, uint64_t v, int width)
{
    for (int i = width - 1; i >= 0; i--) { o[i] = (char)(v & 0xff); v >>= 8; }
}

static int buf_be(Buf *b, uint64_t v, int width)
{
    if (buf_need(b, width) < 0) return -1;
    put_be(b->p + b->len, v, width);
    b->len += width;
    return 0;
}

/* Results of the parsing helpers: OK, FALL (not for C: the Python path), ERR (exception set). */
#define OK 0
#define FALL 1
#define ERR (-1)

/* -- JSON scanning ------------------------------------------------------------- */

static inline const char *ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static int hex4(const char *p, const char *e, unsigned *out)
{
    if (e - p < 4) return FALL;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return FALL;
    }
    *out = v;
    return OK;
}

/* Length of the valid UTF-8 sequence at p (strict: no overlongs, no surrogates,
 * nothing above U+10FFFF), or 0 when it is not one. */
static int utf8_len(const unsigned char *p, const unsigned char *e)
{
    unsigned c = p[0];
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        return (e - p >= 2 && (p[1] & 0xc0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xe0 && c <= 0xef) {
        if (e - p < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && p[1] < 0xa0) return 0;   /* overlong */
        if (c == 0xed && p[1] >= 0xa0) return 0;  /* a surrogate */
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (e - p < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80
            || (p[3] & 0xc0) != 0x80) return 0;
        if (c == 0xf0 && p[1] < 0x90) return 0;   /* overlong */
        if (c == 0xf4 && p[1] >= 0x90) return 0;  /* above U+10FFFF */
        return 4;
    }
    return 0;
}

static int put_utf8(Buf *out, unsigned cp)
{
    if (buf_need(out, 4) < 0) return ERR;
    char *o = out->p + out->len;
    if (cp < 0x80) { o[0] = (char)cp; out->len += 1; }
    else if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3f)); out->len += 2;
    } else if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f)); out->len += 3;
    } else {
        o[0] = (char)(0xf0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); o[3] = (char)(0x80 | (cp & 0x3f));
        out->len += 4;
    }
    return OK;
}

/* The JSON string at *pp (which points at its opening quote).  Its text,
 * unescaped, is appended to ``out`` when out is not NULL; ``chars`` gets the
 * number of code points, ``nul`` whether it holds U+0000.  *pp is moved past
 * the closing quote.  FALL for anything orjson might refuse or read otherwise. */
static int scan_string(const char **pp, const char *e, Buf *out, Py_ssize_t *chars, int *nul)
{
    const char *p = *pp + 1;
    Py_ssize_t n = 0;
    int has_nul = 0;
    for (;;) {
        /* a run of plain characters */
        const char *run = p;
        while (p < e) {
            unsigned char c = (unsigned char)*p;
            if (c == '"' || c == '\\' || c < 0x20) break;
            if (c < 0x80) { p++; n++; continue; }
            int k = utf8_len((const unsigned char *)p, (const unsigned char *)e);
            if (!k) return FALL;
            p += k;
            n++;
        }
        if (out && p > run) {
            if (buf_need(out, p - run) < 0) return ERR;
            memcpy(out->p + out->len, run, (size_t)(p - run));
            out->len += p - run;
        }
        if (p >= e) return FALL;
        if (*p == '"') break;
        if ((unsigned char)*p < 0x20) return FALL;  /* a raw control character */
        /* an escape */
        if (e - p < 2) return FALL;
        char c = p[1];
        unsigned cp;
        p += 2;
        switch (c) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (hex4(p, e, &cp) != OK) return FALL;
            p += 4;
            if (cp >= 0xdc00 && cp <= 0xdfff) return FALL;  /* a lone low surrogate */
            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned lo;
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, e, &lo) != OK
                    || lo < 0xdc00 || lo > 0xdfff) return FALL;
                p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            break;
        default:
            return FALL;
        }
        if (cp == 0) has_nul = 1;
        n++;
        if (out && put_utf8(out, cp) < 0) return ERR;
    }
    *pp = p + 1;
    if (chars) *chars = n;
    if (nul) *nul = has_nul;
    return OK;
}

/* A JSON number at *pp, strictly by the grammar.  ``is_int``: no fraction, no
 * exponent.  FALL when it is not a number. */
static int scan_number(const char **pp, const char *e, int *is_int)
{
    const char *p = *pp;
    int integral = 1;
    if (p < e && *p == '-') p++;
    if (p >= e) return FALL;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') { while (p < e && *p >= '0' && *p <= '9') p++; }
    else return FALL;
    if (p < e && *p == '.') {
        integral = 0;
        p++;
        if (p >= e || *p < '0' || *p > '9') return FALL;
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        integral = 0;
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || *p < '0' || *p > '9') return FALL;
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    *pp = p;
    *is_int = integral;
    return OK;
}

/* An int64 JSON integer at *pp (FALL: not an integer token, or out of int64). */
static int scan_int64(const char **pp, const char *e, long long *out)
{
    const char *start = *pp, *p = start;
    int is_int;
    if (scan_number(&p, e, &is_int) != OK || !is_int) return FALL;
    const char *d = start;
    int neg = 0;
    if (*d == '-') { neg = 1; d++; }
    if (p - d > 19) return FALL;
    uint64_t v = 0;
    for (; d < p; d++) {
        unsigned digit = (unsigned)(*d - '0');
        if (v > (UINT64_MAX - digit) / 10) return FALL;
        v = v * 10 + digit;
    }
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX) return FALL;
    *out = neg ? (long long)(0 - v) : (long long)v;
    *pp = p;
    return OK;
}

static int lit(const char **pp, const char *e, const char *word, Py_ssize_t n)
{
    if (e - *pp < n || memcmp(*pp, word, (size_t)n) != 0) return FALL;
    *pp += n;
    return OK;
}

/* Skip one JSON value, checking it (what orjson would accept, or FALL).
 * ``strict``: a value nothing else reads (an unknown member): no exponents
 * or long numbers, which orjson might refuse (a double's overflow).  A field's
 * value is read again by its decoder (C's own checks, or orjson for R_PY),
 * which refuses what it must: there the grammar is enough. */
static int skip_value(const char **pp, const char *e, int depth, int strict)
{
    const char *p = ws(*pp, e);
    if (p >= e || depth > 64) return FALL;
    int r;
    switch (*p) {
    case '"':
        r = scan_string(&p, e, NULL, NULL, NULL);
        break;
    case 't': r = lit(&p, e, "true", 4); break;
    case 'f': r = lit(&p, e, "false", 5); break;
    case 'n': r = lit(&p, e, "null", 4); break;
    case '{':
        p = ws(p + 1, e);
        if (p < e && *p == '}') { p++; r = OK; break; }
        for (;;) {
            if (p >= e || *p != '"') return FALL;
            if ((r = scan_string(&p, e, NULL, NULL, NULL)) != OK) return r;
            p = ws(p, e);
            if (p >= e || *p != ':') return FALL;
            p++;
            if ((r = skip_value(&p, e, depth + 1, strict)) != OK) return r;
            p = ws(p, e);
            if (p < e && *p == ',') { p = ws(p + 1, e); continue; }
            if (p < e && *p == '}') { p++; break; }
            return FALL;
        }
        r = OK;
        break;
    case '[':
        p = ws(p + 1, e);
        if (p < e && *p == ']') { p++; r = OK; break; }
        for (;;) {
            if ((r = skip_value(&p, e, depth + 1, strict)) != OK) return r;
            p = ws(p, e);
            if (p < e && *p == ',') { p++; continue; }
            if (p < e && *p == ']') { p++; break; }
            return FALL;
        }
        r = OK;
        break;
    default: {
        const char *start = p;
        int is_int;
        r = scan_number(&p, e, &is_int);
        /* orjson reads a long integer as a float and refuses one that overflows
         * a double: no exponents, no long numbers, rather than decide which. */
        if (r == OK && strict && (p - start > 64 || (is_int ? p - start > 18
                                           : memchr(start, 'e', (size_t)(p - start))
                                             || memchr(start, 'E', (size_t)(p - start)))))
            return FALL;
        break;
    }
    }
    if (r != OK) return r;
    *pp = p;
    return OK;
}

/* -- dates and times ----------------------------------------------------------- */

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; Howard Hinnant's algorithm). */
static long long days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (unsigned)((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1);
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

#define PG_EPOCH_DAYS 10957LL  /* 2000-01-01, PostgreSQL's epoch, from 1970-01-01 */

static int digits_at(const char *p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return FALL;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return OK;
}

/* "YYYY-MM-DD" at s: days since 2000-01-01. */
static int iso_date(const char *s, long long *days)
{
    int y, m, d;
    if (digits_at(s, 4, &y) || s[4] != '-' || digits_at(s + 5, 2, &m) || s[7] != '-'
        || digits_at(s + 8, 2, &d)) return FALL;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || m < 1 || m > 12 || d < 1) return FALL;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[m - 1] + (m == 2 && leap)) return FALL;
    *days = days_from_civil(y, m, d) - PG_EPOCH_DAYS;
    return OK;
}

/* "HH:MM:SS" or "HH:MM:SS.ffffff" (the forms isoformat writes) of n bytes at s. */
static int iso_time(const char *s, Py_ssize_t n, long long *us)
{
    int h, mi, sec, frac = 0;
    if (n != 8 && n != 15) return FALL;
    if (digits_at(s, 2, &h) || s[2] != ':' || digits_at(s + 3, 2, &mi) || s[5] != ':'
        || digits_at(s + 6, 2, &sec)) return FALL;
    if (n == 15 && (s[8] != '.' || digits_at(s + 9, 6, &frac))) return FALL;
    if (h > 23 || mi > 59 || sec > 59) return FALL;
    *us = ((long long)h * 3600 + mi * 60 + sec) * 1000000LL + frac;
    return OK;
}

/* -- one field ------------------------------------------------------------------- */

/* The raw text of a JSON string token that has no escapes (FALL otherwise). */
static int plain_string(const char *s, const char *e, const char **text, Py_ssize_t *n)
{
    if (s >= e || *s != '"') return FALL;
    const char *p = s + 1;
    while (p < e && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) p++;
    if (p >= e || *p != '"') return FALL;
    *text = s + 1;
    *n = p - (s + 1);
    return OK;
}

static const char B64DEC[256] = {
#define X 64
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, 62, X, X, X, 63, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, X, X,
    X, X, X, X, X, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
    23, 24, 25, X, X, X, X, X, X, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
    42, 43, 44, 45, 46, 47, 48, 49, 50, 51, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
#undef X
};

/* Canonical base64 (what base64.b64encode writes) of n bytes at s, decoded into out. */
static int base64_into(Buf *out, const char *s, Py_ssize_t n)
{
    if (n % 4) return FALL;
    Py_ssize_t pad = 0;
    if (n && s[n - 1] == '=') pad = (n >= 2 && s[n - 2] == '=') ? 2 : 1;
    if (buf_need(out, n / 4 * 3) < 0) return ERR;
    char *o = out->p + out->len;
    for (Py_ssize_t i = 0; i < n; i += 4) {
        int last = i + 4 == n;
        unsigned v = 0;
        for (int j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)s[i + j];
            unsigned d;
            if (last && j >= 4 - pad) d = 0;  /* '=' (checked above to be the padding) */
            else if ((d = (unsigned char)B64DEC[c]) == 64) return FALL;
            v = (v << 6) | d;
        }
        *o++ = (char)(v >> 16);
        if (!last || pad < 2) *o++ = (char)(v >> 8);
        if (!last || pad < 1) *o++ = (char)v;
    }
    out->len = o - out->p;
    return OK;
}

/* The field whose JSON value is [s, e) appended to ``row`` (length + bytes).
 * ``ival`` gets an int field's value (for the key check). */
static int put_field(const RowField *f, const char *s, const char *e, Buf *row, long long *ival)
{
    const char *p = s;
    if (*s == 'n') {  /* null (the span is a validated JSON value) */
        if (!f->nullable) return FALL;
        return buf_be(row, 0xffffffffu, 4) < 0 ? ERR : OK;
    }
    switch (f->kind) {
    case R_INT: {
        long long v;
        if (scan_int64(&p, e, &v) != OK || p != e || v < f->lo || v > f->hi) return FALL;
        *ival = v;
        if (buf_be(row, (uint64_t)f->width, 4) < 0) return ERR;
        return buf_be(row, (uint64_t)v, f->width) < 0 ? ERR : OK;
    }
    case R_STR:
    case R_ENUM: {
        if (*s != '"') return FALL;
        if (buf_need(row, 4) < 0) return ERR;
        Py_ssize_t at = row->len;
        row->len += 4;
        Py_ssize_t chars;
        int nul, r;
        if ((r = scan_string(&p, e, row, &chars, &nul)) != OK) return r;
        if (nul) return FALL;
        if (f->kind == R_STR) {
            if (f->pad) {
                while (row->len > at + 4 && row->p[row->len - 1] == ' ') { row->len--; chars--; }
            }
            if (f->length >= 0 && chars > f->length) return FALL;
        } else {
            PyObject *label = PyUnicode_DecodeUTF8(row->p + at + 4, row->len - at - 4, NULL);
            if (!label) return ERR;
            int in = PySet_Contains(f->extra, label);
            Py_DECREF(label);
            if (in < 0) return ERR;
            if (!in) return FALL;
        }
        put_be(row->p + at, (uint64_t)(row->len - at - 4), 4);
        return OK;
    }
    case R_BOOL:
        if (e - s == 4 && memcmp(s, "true", 4) == 0) {
            if (buf_be(row, 1, 4) < 0 || buf_be(row, 1, 1) < 0) return ERR;
            return OK;
        }
        if (e - s == 5 && memcmp(s, "false", 5) == 0) {
            if (buf_be(row, 1, 4) < 0 || buf_be(row, 0, 1) < 0) return ERR;
            return OK;
        }
        return FALL;
    case R_FLOAT8: {
        union { double d; uint64_t u; } v;
        if (*s == '"') {
            const char *t;
            Py_ssize_t n;
            if (plain_string(s, e, &t, &n) != OK) return FALL;
            if (n == 3 && memcmp(t, "NaN", 3) == 0) v.u = 0x7ff8000000000000ULL;
            else if (n == 8 && memcmp(t, "Infinity", 8) == 0) v.u = 0x7ff0000000000000ULL;
            else if (n == 9 && memcmp(t, "-Infinity", 9) == 0) v.u = 0xfff0000000000000ULL;
            else return FALL;
        } else {
            int is_int;
            if (scan_number(&p, e, &is_int) != OK || p != e || e - s > 64) return FALL;
            if (is_int && e - s > 18) return FALL;  /* orjson: a float past 64 bits */
            char text[72];
            memcpy(text, s, (size_t)(e - s));
            text[e - s] = 0;
            char *end;
            v.d = PyOS_string_to_double(text, &end, NULL);
            if (v.d == -1.0 && PyErr_Occurred()) { PyErr_Clear(); return FALL; }
            if (end != text + (e - s) || isinf(v.d) || isnan(v.d)) return FALL;
            if (is_int && v.d == 0.0) v.d = 0.0;  /* the int -0 is 0, float(0) is +0.0 */
        }
        if (buf_be(row, 8, 4) < 0) return ERR;
        return buf_be(row, v.u, 8) < 0 ? ERR : OK;
    }
    case R_TSTZ:
    case R_TS:
    case R_DATE:
    case R_TIME:
    case R_UUID:
    case R_BYTEA: {
        const char *t;
        Py_ssize_t n;
        if (plain_string(s, e, &t, &n) != OK) return FALL;
        if (f->kind == R_BYTEA) {
            if (buf_need(row, 4) < 0) return ERR;
            Py_ssize_t at = row->len;
            row->len += 4;
            int r = base64_into(row, t, n);
            if (r != OK) return r;
            put_be(row->p + at, (uint64_t)(row->len - at - 4), 4);
            return OK;
        }
        if (f->kind == R_UUID) {
            if (n != 36) return FALL;
            unsigned char u[16];
            int k = 0;
            for (int j = 0; j < 36;) {
                if (j == 8 || j == 13 || j == 18 || j == 23) {
                    if (t[j] != '-') return FALL;
                    j++;
                    continue;
                }
                unsigned v;
                char quad[4] = {'0', '0', t[j], t[j + 1]};
                if (hex4(quad, quad + 4, &v) != OK) return FALL;
                u[k++] = (unsigned char)v;
                j += 2;
            }
            if (k != 16) return FALL;
            if (buf_be(row, 16, 4) < 0 || buf_need(row, 16) < 0) return ERR;
            memcpy(row->p + row->len, u, 16);
            row->len += 16;
            return OK;
        }
        long long days = 0, us = 0;
        if (f->kind == R_TIME) {
            if (iso_time(t, n, &us) != OK) return FALL;
        } else if (f->kind == R_DATE) {
            if (n != 10 || iso_date(t, &days) != OK) return FALL;
            if (buf_be(row, 4, 4) < 0) return ERR;
            return buf_be(row, (uint64_t)days, 4) < 0 ? ERR : OK;
        } else {
            /* YYYY-MM-DDTHH:MM:SS[.ffffff], then +00:00 for timestamptz */
            Py_ssize_t tn = n - 11;
            if (f->kind == R_TSTZ) {
                if (n < 6 + 11 || memcmp(t + n - 6, "+00:00", 6) != 0) return FALL;
                tn -= 6;
            }
            if (n < 11 || t[10] != 'T' || iso_date(t, &days) != OK
                || iso_time(t + 11, tn, &us) != OK) return FALL;
            us += days * 86400LL * 1000000LL;
        }
        if (buf_be(row, 8, 4) < 0) return ERR;
        return buf_be(row, (uint64_t)us, 8) < 0 ? ERR : OK;
    }
    case R_PY: {
        /* the field's own Python: (JSON of the value) -> its COPY bytes, length
         * included, or None when it refuses the value (the Python path words it) */
        PyObject *arg = PyBytes_FromStringAndSize(s, e - s);
        if (!arg) return ERR;
        PyObject *got = PyObject_CallOneArg(f->extra, arg);
        Py_DECREF(arg);
        if (!got) return ERR;
        if (got == Py_None) { Py_DECREF(got); return FALL; }
        if (!PyBytes_Check(got)) {
            Py_DECREF(got);
            PyErr_SetString(PyExc_TypeError, "a row field function must return bytes or None");
            return ERR;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(got);
        if (buf_need(row, n) < 0) { Py_DECREF(got); return ERR; }
        memcpy(row->p + row->len, PyBytes_AS_STRING(got), (size_t)n);
        row->len += n;
        Py_DECREF(got);
        return OK;
    }
    }
    return FALL;
}

/* -- the entry ------------------------------------------------------------------- */

#define MAX_FIELDS 1600  /* PostgreSQL's column limit */

typedef struct { const char *s, *e; } Span;

/* The object at *pp: its members' names matched against the codec's fields,
 * each value's span recorded in spans[] (FALL on an unknown, missing or
 * repeated name). */
static int scan_fields(const RowCodec *c, const char **pp, const char *e, Span *spans)
{
    const char *p = *pp;
    Py_ssize_t seen = 0, next = 0;
    if (p >= e || *p != '{') return FALL;
    p = ws(p + 1, e);
    if (p < e && *p == '}') return FALL;  /* no fields: Python words it */
    for (;;) {
        const char *name;
        Py_ssize_t n;
        if (plain_string(p, e, &name, &n) != OK) return FALL;
        p = ws(name + n + 1, e);
        if (p >= e || *p != ':') return FALL;
        p = ws(p + 1, e);
        /* fields usually come in field order: try the next one first */
        Py_ssize_t i = -1;
        for (Py_ssize_t k = 0; k < c->nf; k++) {
            Py_ssize_t j = (next + k) % c->nf;
            PyObject *want = c->fields[j].name;
            if (PyBytes_GET_SIZE(want) == n && memcmp(PyBytes_AS_STRING(want), name, (size_t)n) == 0) {
                i = j;
                break;
            }
        }
        if (i < 0 || spans[i].s) return FALL;
        const char *v = p;
        int r = skip_value(&p, e, 1, 0);
        if (r != OK) return r;
        spans[i].s = v;
        spans[i].e = p;
        seen++;
        next = i + 1;
        p = ws(p, e);
        if (p < e && *p == ',') { p = ws(p + 1, e); continue; }
        if (p < e && *p == '}') { p++; break; }
        return FALL;
    }
    if (seen != c->nf) return FALL;
    *pp = p;
    return OK;
}

static PyTypeObject RowCodecType;

static PyObject *create_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "create_row(raw: bytes, codecs: dict)");
        return NULL;
    }
    const char *p = PyBytes_AS_STRING(args[0]);
    const char *e = p + PyBytes_GET_SIZE(args[0]);
    /* the spans of the members this needs */
    Span m = {0}, mv = {0}, k = {0}, f = {0}, i = {0};
    long long t_us = 0;
    int have_v = 0, have_o = 0, have_t = 0;
    p = ws(p, e);
    if (p >= e || *p != '{') Py_RETURN_NONE;
    p = ws(p + 1, e);
    for (;;) {
        const char *name;
        Py_ssize_t n;
        if (plain_string(p, e, &name, &n) != OK) Py_RETURN_NONE;
        p = ws(name + n + 1, e);
        if (p >= e || *p != ':') Py_RETURN_NONE;
        p = ws(p + 1, e);
        const char *v = p;
        Span *into = NULL;
        if (n == 1 && name[0] == 'v') {
            if (have_v++ || lit(&p, e, "1", 1) != OK) Py_RETURN_NONE;
            if (p < e && *p >= '0' && *p <= '9') Py_RETURN_NONE;
            int is_int;
            const char *q = v;
            if (scan_number(&q, e, &is_int) != OK || !is_int || q != p) Py_RETURN_NONE;
        } else if (n == 1 && name[0] == 'o') {
            if (have_o++ || lit(&p, e, "\"c\"", 3) != OK) Py_RETURN_NONE;
        } else if (n == 1 && name[0] == 't') {
            if (have_t++ || scan_int64(&p, e, &t_us) != OK) Py_RETURN_NONE;
        } else {
            if (n == 1 && name[0] == 'm') into = &m;
            else if (n == 2 && name[0] == 'm' && name[1] == 'v') into = &mv;
            else if (n == 1 && name[0] == 'k') into = &k;
            else if (n == 1 && name[0] == 'f') into = &f;
            else if (n == 1 && name[0] == 'i') into = &i;
            if (into && into->s) Py_RETURN_NONE;  /* repeated: orjson keeps the last */
            int r = skip_value(&p, e, 1, into == NULL);
            if (r == ERR) return NULL;
            if (r != OK) Py_RETURN_NONE;
            if (into) { into->s = v; into->e = p; }
        }
        p = ws(p, e);
        if (p < e && *p == ',') { p = ws(p + 1, e); continue; }
        if (p < e && *p == '}') { p++; break; }
        Py_RETURN_NONE;
    }
    if (ws(p, e) != e || !have_v || !have_o || !have_t || !m.s || !k.s || !f.s) Py_RETURN_NONE;

    /* the table name, unescaped (a table may be named anything) */
    PyObject *codec_obj = NULL;  /* borrowed */
    const char *table;
    Py_ssize_t table_n;
    if (plain_string(m.s, m.e, &table, &table_n) == OK && PyDict_GET_SIZE(args[1]) <= 16) {
        /* a drainer runs a few models: comparing the names costs less than
         * making and hashing a bytes key per entry (callgrind) */
        Py_ssize_t pos = 0;
        PyObject *name, *value;
        while (PyDict_Next(args[1], &pos, &name, &value)) {
            if (PyBytes_Check(name) && PyBytes_GET_SIZE(name) == table_n
                && memcmp(PyBytes_AS_STRING(name), table, (size_t)table_n) == 0) {
                codec_obj = value;
                break;
            }
        }
        if (!codec_obj) Py_RETURN_NONE;
    } else {
        PyObject *tkey;
        if (plain_string(m.s, m.e, &table, &table_n) == OK) {
            tkey = PyBytes_FromStringAndSize(table, table_n);
        } else {
            Buf tb;
            const char *tp = m.s;
            buf_init(&tb);
            int tr = *tp == '"' ? scan_string(&tp, m.e, &tb, NULL, NULL) : FALL;
            tkey = tr == OK ? PyBytes_FromStringAndSize(tb.p, tb.len) : NULL;
            buf_free(&tb);
            if (tr == FALL) Py_RETURN_NONE;
        }
        if (!tkey) return NULL;
        codec_obj = PyDict_GetItemWithError(args[1], tkey);
        Py_DECREF(tkey);
        if (!codec_obj) {
            if (PyErr_Occurred()) return NULL;
            Py_RETURN_NONE;
        }
    }
    if (!PyObject_TypeCheck(codec_obj, &RowCodecType)) {
        PyErr_SetString(PyExc_TypeError, "create_row: codecs must map to RowCodec");
        return NULL;
    }
    RowCodec *c = (RowCodec *)codec_obj;
    /* another model version: Python adapts or holds it */
    if (mv.s && !(mv.e - mv.s == 4 && memcmp(mv.s, "null", 4) == 0)
        && !(mv.e - mv.s == PyBytes_GET_SIZE(c->mv)
             && memcmp(mv.s, PyBytes_AS_STRING(c->mv), (size_t)(mv.e - mv.s)) == 0)) {
        Py_RETURN_NONE;
    }
    if (c->nf > MAX_FIELDS) Py_RETURN_NONE;
    Span spans_stack[32];
    Span *spans = c->nf <= 32 ? spans_stack : PyMem_Calloc((size_t)c->nf, sizeof(Span));
    if (!spans) return PyErr_NoMemory();
    memset(spans, 0, sizeof(Span) * (size_t)(c->nf <= 32 ? 32 : c->nf));
    Buf row, kbuf;
    buf_init(&row);
    buf_init(&kbuf);
    PyObject *result = NULL, *key = NULL, *mark = NULL, *row_bytes = NULL;
    int r = scan_fields(c, &(const char *){f.s}, f.e, spans);
    if (r != OK) goto done;
    if ((r = buf_be(&row, (uint64_t)c->nf, 2)) != OK) goto done;
    long long key_int = 0;
    Py_ssize_t key_at = 0, key_end = 0;
    for (Py_ssize_t j = 0; j < c->nf; j++) {
        long long ival = 0;
        Py_ssize_t at = row.len;
        if ((r = put_field(&c->fields[j], spans[j].s, spans[j].e, &row, &ival)) != OK) goto done;
        if (j == c->key_index) {
            if (*spans[j].s == 'n') { r = FALL; goto done; }  /* a NULL key */
            key_int = ival;
            key_at = at + 4;
            key_end = row.len;
        }
    }
    /* the entry's key must be the key field's (Python words the mismatch) */
    const char *kp = k.s;
    if (c->key_str) {
        if (*kp != '"') { r = FALL; goto done; }
        if ((r = scan_string(&kp, k.e, &kbuf, NULL, NULL)) != OK) goto done;
        if (kbuf.len != key_end - key_at
            || memcmp(kbuf.p, row.p + key_at, (size_t)kbuf.len) != 0) { r = FALL; goto done; }
        key = PyUnicode_DecodeUTF8(kbuf.p, kbuf.len, NULL);
    } else {
        long long kv;
        if (scan_int64(&kp, k.e, &kv) != OK || kp != k.e || kv != key_int) { r = FALL; goto done; }
        key = PyLong_FromLongLong(kv);
    }
    if (!key) { r = ERR; goto done; }
    if (i.s && !(i.e - i.s == 4 && memcmp(i.s, "null", 4) == 0)) {
        const char *ip = i.s;
        Buf ib;
        buf_init(&ib);
        if (*ip != '"' || (r = scan_string(&ip, i.e, &ib, NULL, NULL)) != OK) {
            buf_free(&ib);
            if (r == OK) r = FALL;
            goto done;
        }
        mark = PyUnicode_DecodeUTF8(ib.p, ib.len, NULL);
        buf_free(&ib);
        if (!mark) { r = ERR; goto done; }
    } else {
        mark = Py_NewRef(Py_None);
    }
    row_bytes = PyBytes_FromStringAndSize(row.p, row.len);
    if (!row_bytes) { r = ERR; goto done; }
    PyObject *t = PyLong_FromLongLong(t_us);
    if (!t) { r = ERR; goto done; }
    result = PyTuple_Pack(5, codec_obj, key, row_bytes, t, mark);
    Py_DECREF(t);
    if (!result) r = ERR;
done:
    Py_XDECREF(key);
    Py_XDECREF(mark);
    Py_XDECREF(row_bytes);
    buf_free(&row);
    buf_free(&kbuf);
    if (spans != spans_stack) PyMem_Free(spans);
    if (r == ERR) { Py_XDECREF(result); return NULL; }
    if (r == FALL) { Py_XDECREF(result); Py_RETURN_NONE; }
    return result;
}

/* -- the RowCodec type ------------------------------------------------------------ */

static void codec_clear_fields(RowCodec *self)
{
    if (self->fields) {
        for (Py_ssize_t j = 0; j < self->nf; j++) {
            Py_CLEAR(self->fields[j].name);
            Py_CLEAR(self->fields[j].extra);
        }
        PyMem_Free(self->fields);
        self->fields = NULL;
    }
    self->nf = 0;
}

static int codec_traverse(RowCodec *self, visitproc visit, void *arg)
{
    Py_VISIT(self->info);
    Py_VISIT(self->mv);
    for (Py_ssize_t j = 0; j < self->nf && self->fields; j++) {
        Py_VISIT(self->fields[j].name);
        Py_VISIT(self->fields[j].extra);
    }
    return 0;
}

static int codec_clear(RowCodec *self)
{
    Py_CLEAR(self->info);
    Py_CLEAR(self->mv);
    codec_clear_fields(self);
    return 0;
}

static void codec_dealloc(RowCodec *self)
{
    PyObject_GC_UnTrack(self);
    codec_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* RowCodec(info, mv, plan, key_index, key_str); plan: one tuple per field,
 * (name bytes, kind, nullable, lo, hi, width, length, pad, extra) */
static int codec_init(RowCodec *self, PyObject *args, PyObject *kwds)
{
    PyObject *info, *mv, *plan;
    Py_ssize_t key_index;
    int key_str;
    if (!PyArg_ParseTuple(args, "OSO!np", &info, &mv, &PyTuple_Type, &plan, &key_index, &key_str))
        return -1;
    Py_ssize_t nf = PyTuple_GET_SIZE(plan);
    if (nf < 1 || nf > MAX_FIELDS || key_index < 0 || key_index >= nf) {
        PyErr_SetString(PyExc_ValueError, "RowCodec: bad field count or key index");
        return -1;
    }
    codec_clear(self);
    self->fields = PyMem_Calloc((size_t)nf, sizeof(RowField));
    if (!self->fields) { PyErr_NoMemory(); return -1; }
    self->nf = nf;
    for (Py_ssize_t j = 0; j < nf; j++) {
        RowField *fd = &self->fields[j];
        PyObject *name, *extra;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(plan, j), "SiiLLinpO", &name, &fd->kind,
                              &fd->nullable, &fd->lo, &fd->hi, &fd->width, &fd->length,
                              &fd->pad, &extra)) return -1;
        if (fd->kind < 0 || fd->kind > R_LAST
            || (fd->kind == R_INT && fd->width != 2 && fd->width != 4 && fd->width != 8)
            || (fd->kind == R_ENUM && !PyFrozenSet_Check(extra))
            || (fd->kind == R_PY && !PyCallable_Check(extra))) {
            PyErr_Format(PyExc_ValueError, "RowCodec: bad plan for field %zd", j);
            return -1;
        }
        fd->name = Py_NewRef(name);
        fd->extra = Py_NewRef(extra);
    }
    int kk = self->fields[key_index].kind;
    if (key_str ? kk != R_STR : kk != R_INT) {
        PyErr_SetString(PyExc_ValueError, "RowCodec: the key must be an int or text field");
        return -1;
    }
    self->info = Py_NewRef(info);
    self->mv = Py_NewRef(mv);
    self->key_index = key_index;
    self->key_str = key_str;
    return 0;
}

static PyObject *codec_get_info(RowCodec *self, void *closure)
{
    if (!self->info) Py_RETURN_NONE;
    return Py_NewRef(self->info);
}

static PyGetSetDef codec_getset[] = {
    {"info", (getter)codec_get_info, NULL, "the ModelInfo this codec was built for", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RowCodecType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvfast._speedups.RowCodec",
    .tp_basicsize = sizeof(RowCodec),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One model's create entries -> binary COPY rows (see kvfast/crows.py).",
    .tp_traverse = (traverseproc)codec_traverse,
    .tp_clear = (inquiry)codec_clear,
    .tp_dealloc = (destructor)codec_dealloc,
    .tp_init = (initproc)codec_init,
    .tp_new = PyType_GenericNew,
    .tp_getset = codec_getset,
};

static PyMethodDef copyrows_methods[] = {
    {"create_row", (PyCFunction)(void (*)(void))create_row, METH_FASTCALL,
     "create_row(raw, codecs) -> (codec, key, COPY row, t_us, mark id) or None."},
    {NULL, NULL, 0, NULL},
};

/* Called by PyInit__speedups (kvfast/_speedups.c). */
int kv_copyrows_add(PyObject *m)
{
    if (PyType_Ready(&RowCodecType) < 0) return -1;
    Py_INCREF(&RowCodecType);
    if (PyModule_AddObject(m, "RowCodec", (PyObject *)&RowCodecType) < 0) {
        Py_DECREF(&RowCodecType);
        return -1;
    }
    if (PyModule_AddFunctions(m, copyrows_methods) < 0) return -1;
    static const struct { const char *name; int value; } kinds[] = {
        {"R_INT", R_INT}, {"R_STR", R_STR}, {"R_BOOL", R_BOOL}, {"R_FLOAT8", R_FLOAT8},
        {"R_TSTZ", R_TSTZ}, {"R_TS", R_TS}, {"R_DATE", R_DATE}, {"R_TIME", R_TIME},
        {"R_UUID", R_UUID}, {"R_BYTEA", R_BYTEA}, {"R_ENUM", R_ENUM}, {"R_PY", R_PY},
    };
    for (size_t j = 0; j < sizeof kinds / sizeof kinds[0]; j++) {
        if (PyModule_AddIntConstant(m, kinds[j].name, kinds[j].value) < 0) return -1;
    }
    return 0;
}
