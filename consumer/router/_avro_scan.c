/*
 * consumer.router._avro_scan: reads one Avro record along a plan, keeping only planned fields.
 *
 * Why C: routing an Avro event needs its op, four source fields and a few columns; the rest is
 * stepped over by length. In Python that stepping costs about 10 us an event, more than the
 * whole JSON decode (msgspec, C). consumer/router/avro_reader.py compiles each writer schema
 * into a plan and uses this module when it was built; without it, the same plan's Python reader
 * serves, slower, with the same results (tests/unit/test_avro_reader.py runs both).
 *
 * A plan is a tuple of fields, one per field of the record in the writer's order:
 *     (key, kind, nullable, sub)
 *   key       the dict key to store the value under (str), or None to step over the field;
 *   kind      one of the KIND_* codes below;
 *   nullable  1 for Avro's ["null", T] union (index 0: None, index 1: T), else 0;
 *   sub       for KIND_RECORD, the nested record's plan; else None.
 * avro_reader.py builds plans only for records whose fields are all of these shapes, so every
 * plan is finite (no record refers to itself) and its depth is the schema's.
 *
 * The bytes are untrusted: every read is bounds-checked against the buffer, varints are at most
 * ten bytes and must fit 64 bits, lengths must be non-negative and inside the buffer, booleans
 * are 0 or 1, strings are strict UTF-8. Anything else raises ValueError, and the caller reads
 * the message again with fastavro, which says why.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum {
    KIND_NULL = 0,
    KIND_BOOLEAN = 1,
    KIND_LONG = 2, /* Avro int and long: both zigzag varints */
    KIND_FLOAT = 3,
    KIND_DOUBLE = 4,
    KIND_BYTES = 5,
    KIND_STRING = 6,
    KIND_RECORD = 7,
};

typedef struct {
    const unsigned char *buf;
    Py_ssize_t len;
    Py_ssize_t pos;
    PyObject *float32; /* float32_text: a 32-bit float as Java prints it */
} Cursor;

static int
fail(const char *what, Py_ssize_t at)
{
    PyErr_Format(PyExc_ValueError, "%s at byte %zd", what, at);
    return -1;
}

static int
read_varint(Cursor *c, int64_t *out)
{
    uint64_t value = 0;
    int shift = 0;
    while (1) {
        if (c->pos >= c->len) {
            return fail("a varint past the end", c->pos);
        }
        unsigned char byte = c->buf[c->pos++];
        if (shift == 63 && (byte & 0x7E)) {
            return fail("a varint beyond 64 bits", c->pos - 1);
        }
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            break;
        }
        shift += 7;
        if (shift > 63) {
            return fail("a varint longer than ten bytes", c->pos);
        }
    }
    *out = (int64_t)(value >> 1) ^ -(int64_t)(value & 1);
    return 0;
}

/* A string's or bytes' length, checked to lie inside the buffer. */
static int
read_size(Cursor *c, Py_ssize_t *out)
{
    int64_t size;
    Py_ssize_t at = c->pos;
    if (read_varint(c, &size) < 0) {
        return -1;
    }
    if (size < 0 || size > (int64_t)(c->len - c->pos)) {
        return fail("a length past the end", at);
    }
    *out = (Py_ssize_t)size;
    return 0;
}

static const Py_UCS1 B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Bytes as Kafka Connect's JsonConverter writes them: standard base64 with padding. */
static PyObject *
base64_text(const unsigned char *src, Py_ssize_t n)
{
    Py_ssize_t out_len = ((n + 2) / 3) * 4;
    PyObject *text = PyUnicode_New(out_len, 127);
    if (text == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t i = 0, o = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)src[i] << 16) | ((uint32_t)src[i + 1] << 8) | src[i + 2];
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)src[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)src[i + 1] << 8;
        }
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? B64[(v >> 6) & 63] : (Py_UCS1)'=';
        out[o++] = (Py_UCS1)'=';
    }
    return text;
}

static PyObject *read_record(Cursor *c, PyObject *plan);
static int skip_record(Cursor *c, PyObject *plan);

/* One value of a kind: a new reference, or NULL with an exception set. */
static PyObject *
read_value(Cursor *c, long kind, PyObject *sub)
{
    switch (kind) {
    case KIND_NULL:
        Py_RETURN_NONE;
    case KIND_BOOLEAN: {
        if (c->pos >= c->len) {
            fail("a boolean past the end", c->pos);
            return NULL;
        }
        unsigned char byte = c->buf[c->pos];
        if (byte > 1) {
            fail("a boolean that is neither 0 nor 1", c->pos);
            return NULL;
        }
        c->pos++;
        return PyBool_FromLong(byte);
    }
    case KIND_LONG: {
        int64_t value;
        if (read_varint(c, &value) < 0) {
            return NULL;
        }
        return PyLong_FromLongLong(value);
    }
    case KIND_FLOAT: {
        if (c->len - c->pos < 4) {
            fail("a float past the end", c->pos);
            return NULL;
        }
        double value = PyFloat_Unpack4((const char *)c->buf + c->pos, 1);
        if (value == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        c->pos += 4;
        PyObject *number = PyFloat_FromDouble(value);
        if (number == NULL) {
            return NULL;
        }
        PyObject *text = PyObject_CallOneArg(c->float32, number);
        Py_DECREF(number);
        return text;
    }
    case KIND_DOUBLE: {
        if (c->len - c->pos < 8) {
            fail("a double past the end", c->pos);
            return NULL;
        }
        double value = PyFloat_Unpack8((const char *)c->buf + c->pos, 1);
        if (value == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        c->pos += 8;
        return PyFloat_FromDouble(value);
    }
    case KIND_BYTES:
    case KIND_STRING: {
        Py_ssize_t size;
        if (read_size(c, &size) < 0) {
            return NULL;
        }
        const unsigned char *start = c->buf + c->pos;
        c->pos += size;
        if (kind == KIND_BYTES) {
            return base64_text(start, size);
        }
        return PyUnicode_DecodeUTF8((const char *)start, size, "strict");
    }
    case KIND_RECORD:
        return read_record(c, sub);
    default:
        PyErr_Format(PyExc_ValueError, "a plan with an unknown kind %ld", kind);
        return NULL;
    }
}

static int
skip_value(Cursor *c, long kind, PyObject *sub)
{
    switch (kind) {
    case KIND_NULL:
        return 0;
    case KIND_BOOLEAN:
        if (c->pos >= c->len) {
            return fail("a boolean past the end", c->pos);
        }
        c->pos++;
        return 0;
    case KIND_LONG: {
        int64_t ignored;
        return read_varint(c, &ignored);
    }
    case KIND_FLOAT:
    case KIND_DOUBLE: {
        Py_ssize_t width = kind == KIND_FLOAT ? 4 : 8;
        if (c->len - c->pos < width) {
            return fail("a number past the end", c->pos);
        }
        c->pos += width;
        return 0;
    }
    case KIND_BYTES:
    case KIND_STRING: {
        Py_ssize_t size;
        if (read_size(c, &size) < 0) {
            return -1;
        }
        c->pos += size;
        return 0;
    }
    case KIND_RECORD:
        return skip_record(c, sub);
    default:
        PyErr_Format(PyExc_ValueError, "a plan with an unknown kind %ld", kind);
        return -1;
    }
}

/* A ["null", T] union's index: 0 for null, 1 for T (the varints 0x00 and 0x02). */
static int
read_branch(Cursor *c, int *present)
{
    if (c->pos >= c->len) {
        return fail("a union index past the end", c->pos);
    }
    unsigned char index = c->buf[c->pos];
    if (index != 0 && index != 2) {
        return fail("a union index that is neither 0 nor 1", c->pos);
    }
    c->pos++;
    *present = index == 2;
    return 0;
}

/* A plan field's parts, borrowed from its tuple (the plan outlives the call). */
static int
field_parts(PyObject *field, PyObject **key, long *kind, int *nullable, PyObject **sub)
{
    if (!PyTuple_CheckExact(field) || PyTuple_GET_SIZE(field) != 4) {
        PyErr_SetString(PyExc_TypeError, "a plan field is a tuple (key, kind, nullable, sub)");
        return -1;
    }
    *key = PyTuple_GET_ITEM(field, 0);
    *kind = PyLong_AsLong(PyTuple_GET_ITEM(field, 1));
    if (*kind == -1 && PyErr_Occurred()) {
        return -1;
    }
    *nullable = PyObject_IsTrue(PyTuple_GET_ITEM(field, 2));
    if (*nullable < 0) {
        return -1;
    }
    *sub = PyTuple_GET_ITEM(field, 3);
    if (*kind == KIND_RECORD && !PyTuple_CheckExact(*sub)) {
        PyErr_SetString(PyExc_TypeError, "a record field's plan is a tuple");
        return -1;
    }
    return 0;
}

static PyObject *
read_record(Cursor *c, PyObject *plan)
{
    if (Py_EnterRecursiveCall(" reading an Avro record")) {
        return NULL;
    }
    PyObject *record = PyDict_New();
    if (record == NULL) {
        goto error;
    }
    Py_ssize_t fields = PyTuple_GET_SIZE(plan);
    for (Py_ssize_t i = 0; i < fields; i++) {
        PyObject *key, *sub;
        long kind;
        int nullable, present = 1;
        if (field_parts(PyTuple_GET_ITEM(plan, i), &key, &kind, &nullable, &sub) < 0) {
            goto error;
        }
        if (nullable && read_branch(c, &present) < 0) {
            goto error;
        }
        if (key == Py_None) {
            if (present && skip_value(c, kind, sub) < 0) {
                goto error;
            }
            continue;
        }
        PyObject *value;
        if (present) {
            value = read_value(c, kind, sub);
            if (value == NULL) {
                goto error;
            }
        }
        else {
            value = Py_NewRef(Py_None);
        }
        int stored = PyDict_SetItem(record, key, value);
        Py_DECREF(value);
        if (stored < 0) {
            goto error;
        }
    }
    Py_LeaveRecursiveCall();
    return record;
error:
    Py_XDECREF(record);
    Py_LeaveRecursiveCall();
    return NULL;
}

static int
skip_record(Cursor *c, PyObject *plan)
{
    if (Py_EnterRecursiveCall(" stepping over an Avro record")) {
        return -1;
    }
    Py_ssize_t fields = PyTuple_GET_SIZE(plan);
    int result = 0;
    for (Py_ssize_t i = 0; i < fields && result == 0; i++) {
        PyObject *key, *sub;
        long kind;
        int nullable, present = 1;
        result = field_parts(PyTuple_GET_ITEM(plan, i), &key, &kind, &nullable, &sub);
        if (result == 0 && nullable) {
            result = read_branch(c, &present);
        }
        if (result == 0 && present) {
            result = skip_value(c, kind, sub);
        }
    }
    Py_LeaveRecursiveCall();
    return result;
}

PyDoc_STRVAR(scan_doc,
             "scan(plan, buf, pos, float32) -> dict\n\n"
             "The record at buf[pos:] along plan; raises ValueError unless it ends exactly at\n"
             "the end of buf.");

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan(plan, buf, pos, float32) takes four arguments");
        return NULL;
    }
    PyObject *plan = args[0], *buf = args[1], *float32 = args[3];
    if (!PyTuple_CheckExact(plan) || !PyBytes_CheckExact(buf) || !PyCallable_Check(float32)) {
        PyErr_SetString(PyExc_TypeError, "scan(plan: tuple, buf: bytes, pos: int, float32)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[2]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Cursor c = {
        (const unsigned char *)PyBytes_AS_STRING(buf), PyBytes_GET_SIZE(buf), pos, float32};
    if (pos < 0 || pos > c.len) {
        PyErr_SetString(PyExc_ValueError, "a start outside the buffer");
        return NULL;
    }
    PyObject *record = read_record(&c, plan);
    if (record != NULL && c.pos != c.len) {
        Py_DECREF(record);
        PyErr_Format(PyExc_ValueError, "%zd bytes left over after the record", c.len - c.pos);
        return NULL;
    }
    return record;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "consumer.router._avro_scan",
    .m_doc = "Reads Avro records along a plan (see avro_reader.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__avro_scan(void)
{
    return PyModule_Create(&module);
}
