/* The compiled hot path: the callbacks that run on the training thread for every optimizer step,
 * scheduler step and zero_grad, written against the CPython C API.
 *
 * recorder.py holds the reference implementation of each callback (Recorder.optimizer_pre,
 * optimizer_post, scheduler_step, zero_grad). The functions here do exactly what those do on the
 * common path (a known optimizer, float LRs, no sampling, no CUDA timing, no GradScaler), and hand
 * every other call to the Python method unchanged, before touching any state. They produce the same
 * rows, in the same buffers, and feed the same Event to the same rule engine.
 *
 * A Hook is what torch (or patching's wrappers) calls: it looks up the sink's current target and runs
 * the compiled callback when that is one Recorder, or the target's Python method otherwise (several
 * nested traces, no trace).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <structmember.h>

/* ------------------------------------------------------------------------------------ bound state */
/* Set once by bind() from lrdebug.record.hotpath: the objects the Python implementation uses. */
static PyObject *Recorder_type;      /* lrdebug.record.recorder.Recorder */
static PyObject *Event_type;         /* lrdebug.tracefile.schema.Event */
static PyObject *code_kind;          /* callsites._code_kind: id(code) -> kind */
static PyObject *site_ids;           /* callsites._site_ids: (id(code), f_lasti) -> site */
static PyObject *SITES;              /* callsites.SITES: site -> (file, line, function) */
static PyObject *FRAMEWORK_SITES;    /* callsites.FRAMEWORK_SITES: site -> framework frame or None */
static PyObject *walk_call_site;     /* callsites._walk_call_site(frame) -> site */
static PyObject *patching_globals;   /* patching's module dict (scaler_depth) */
static PyObject *getframe;           /* sys._getframe */
static PyObject *perf_counter_ns;    /* time.perf_counter_ns, where clock_gettime is not it */
static PyObject *GRAD_NONE, *GRAD_FRESH, *GRAD_SAME;
static PyObject *EV_OPTIMIZER_STEP, *EV_SCHEDULER_STEP, *EV_ZERO_GRAD, *ORIGIN_USER;
static long KIND_USER, KIND_INTERNAL;

enum { SITE_OPTIMIZER = 1, SITE_SCHEDULER = 2, SITE_ZERO_GRAD = 3 };
/* Per callback: how deep (from the innermost Python frame) the user's frame was at its last call. */
static Py_ssize_t depth_hint[4] = {-1, -1, -1, -1}; /* -1: none yet (0 is a depth: the innermost frame) */

/* Interned attribute names. */
static PyObject *s_param_groups, *s_lr, *s_params, *s_grad, *s_buffer_filled, *s_feed, *s_report_finding,
    *s_checks_failed, *s_internal_error, *s_scaler_depth, *s_optimizer, *s_zero_grad, *s_optimizer_origin;

/* What a compiled callback did. */
enum { DONE = 0, DELEGATE = 1, FAILED = -1 };

static int bound = 0;

/* ------------------------------------------------------------------------------------ fields */
/* The attributes the callbacks read and write on every event. The Recorder, its per-optimizer and
 * per-scheduler states and the sink declare them in __slots__: bind() finds each slot's offset, and an
 * object of that very class is read and written there directly (a few instructions, where
 * PyObject_GetAttr costs ~200); any other object (a subclass, a stand-in) goes through
 * PyObject_GetAttr/SetAttr as Python would. */
enum { OWN_REC, OWN_OPT, OWN_SCHED, OWN_SINK, N_OWNERS };
static const char *owner_keys[N_OWNERS] = {"Recorder", "OptState", "SchedState", "Sink"};

typedef struct {
    const char *text;
    int owner;
    PyObject *name;     /* interned */
    PyTypeObject *type; /* the class whose slot it is, or NULL: always PyObject_GetAttr */
    Py_ssize_t offset;
} Field;

enum {
    F_REC_OPTS, F_REC_SCHEDS, F_REC_ENABLED, F_REC_SAMPLE_UPDATES, F_REC_CUDA_TIMING, F_REC_DATA_WAIT, F_REC_SEQ,
    F_REC_BUF, F_REC_FLUSH_LEN, F_REC_CHECKER, F_REC_OTHER, F_REC_FRAMEWORKS,
    F_OPT_REF, F_OPT_T0, F_OPT_LRS, F_OPT_SCALED, F_OPT_CUDA, F_OPT_SAMPLED, F_OPT_GRAD_REF, F_OPT_LAST_T,
    F_OPT_STEPS, F_OPT_INDEX,
    F_SCHED_REF, F_SCHED_OST, F_SCHED_HORIZON, F_SCHED_INDEX, F_SCHED_STEPS,
    F_SINK_TARGET,
    N_FIELDS
};

static Field fields[N_FIELDS] = {
    [F_REC_OPTS] = {"_opts", OWN_REC}, [F_REC_SCHEDS] = {"_scheds", OWN_REC}, [F_REC_ENABLED] = {"enabled", OWN_REC},
    [F_REC_SAMPLE_UPDATES] = {"sample_updates", OWN_REC}, [F_REC_CUDA_TIMING] = {"cuda_timing", OWN_REC},
    [F_REC_DATA_WAIT] = {"_data_wait", OWN_REC}, [F_REC_SEQ] = {"_seq", OWN_REC}, [F_REC_BUF] = {"buf", OWN_REC},
    [F_REC_FLUSH_LEN] = {"_flush_len", OWN_REC}, [F_REC_CHECKER] = {"checker", OWN_REC},
    [F_REC_OTHER] = {"other", OWN_REC}, [F_REC_FRAMEWORKS] = {"_frameworks", OWN_REC},
    [F_OPT_REF] = {"ref", OWN_OPT}, [F_OPT_T0] = {"t0", OWN_OPT}, [F_OPT_LRS] = {"lrs", OWN_OPT},
    [F_OPT_SCALED] = {"scaled", OWN_OPT}, [F_OPT_CUDA] = {"cuda", OWN_OPT}, [F_OPT_SAMPLED] = {"sampled", OWN_OPT},
    [F_OPT_GRAD_REF] = {"grad_ref", OWN_OPT}, [F_OPT_LAST_T] = {"last_t", OWN_OPT}, [F_OPT_STEPS] = {"steps", OWN_OPT},
    [F_OPT_INDEX] = {"index", OWN_OPT},
    [F_SCHED_REF] = {"ref", OWN_SCHED}, [F_SCHED_OST] = {"ost", OWN_SCHED}, [F_SCHED_HORIZON] = {"horizon", OWN_SCHED},
    [F_SCHED_INDEX] = {"index", OWN_SCHED}, [F_SCHED_STEPS] = {"steps", OWN_SCHED},
    [F_SINK_TARGET] = {"target", OWN_SINK},
};

#define SLOT_PTR(obj, f) ((PyObject **)((char *)(obj) + (f)->offset))

/* obj.<field>: a new reference, NULL with an exception set. */
static inline PyObject *
field_get(PyObject *obj, int i)
{
    Field *f = &fields[i];
    if (Py_TYPE(obj) == f->type) {
        PyObject *v = *SLOT_PTR(obj, f);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, f->name); /* also raises the AttributeError of an unset slot */
}

/* obj.<field> = v. */
static inline int
field_set(PyObject *obj, int i, PyObject *v)
{
    Field *f = &fields[i];
    if (Py_TYPE(obj) == f->type) {
        PyObject **p = SLOT_PTR(obj, f);
        PyObject *old = *p;
        *p = Py_NewRef(v);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(obj, f->name, v);
}

/* Each field's slot in its owner class (bind()); a field the class does not keep in a slot stays slow. */
static int
bind_fields(PyObject *ns)
{
    for (int i = 0; i < N_FIELDS; i++) {
        Field *f = &fields[i];
        f->type = NULL;
        if (f->name == NULL && (f->name = PyUnicode_InternFromString(f->text)) == NULL)
            return -1;
        PyObject *cls = PyDict_GetItemString(ns, owner_keys[f->owner]);
        if (cls == NULL || !PyType_Check(cls))
            continue;
        PyObject *d = PyDict_GetItemWithError(((PyTypeObject *)cls)->tp_dict, f->name);
        if (d == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READONLY)) {
                f->type = (PyTypeObject *)cls;
                f->offset = m->offset;
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ small helpers */
/* The exception being raised, taken (a new reference; the error indicator is cleared). */
static PyObject *
take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static PyObject *
now_ns(void)
{
#if defined(__linux__)
    /* time.perf_counter_ns() is CLOCK_MONOTONIC on Linux: the Python wrappers' times share its origin. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
#else
    return PyObject_CallNoArgs(perf_counter_ns);
#endif
}

/* The referent of a weak reference, as a borrowed pointer (NULL when dead); -1 on error. */
static int
weak_target(PyObject *ref, PyObject **out)
{
    if (!PyWeakref_Check(ref)) {
        PyErr_SetString(PyExc_TypeError, "expected a weak reference");
        return -1;
    }
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj;
    if (PyWeakref_GetRef(ref, &obj) < 0)
        return -1;
    *out = obj; /* borrowed below: the caller holds the object that we compare it to */
    Py_XDECREF(obj);
#else
    PyObject *obj = PyWeakref_GetObject(ref);
    *out = obj == Py_None ? NULL : obj;
#endif
    return 0;
}

/* Per registry (optimizers, schedulers): the last state found, held with its registry. A state whose
 * object is alive is never replaced in its registry, so a hit whose state.ref() is obj is what the
 * dictionary holds (and a dead object's address, reused, fails that check). */
static struct {
    PyObject *registry, *st; /* strong references */
    PyObject *obj;           /* compared only */
} last_state[2];

static int
is_state_of(PyObject *st, int ref_field, PyObject *obj)
{
    PyObject *ref = field_get(st, ref_field);
    if (ref == NULL)
        return -1;
    PyObject *target;
    int rc = weak_target(ref, &target);
    Py_DECREF(ref);
    return rc < 0 ? -1 : target == obj;
}

/* state = registry.get(id(obj)), with state.ref() is obj when ``checked``: a borrowed pointer, NULL when
 * absent (no error). ``registry``: F_REC_OPTS or F_REC_SCHEDS. */
static PyObject *
lookup_state(PyObject *rec, int registry_field, PyObject *obj, int checked)
{
    PyObject *registry = field_get(rec, registry_field);
    if (registry == NULL)
        return NULL;
    int slot = registry_field == F_REC_OPTS ? 0 : 1;
    int ref_field = slot == 0 ? F_OPT_REF : F_SCHED_REF;
    if (last_state[slot].registry == registry && last_state[slot].obj == obj) {
        if (is_state_of(last_state[slot].st, ref_field, obj) > 0) {
            Py_DECREF(registry); /* the cache keeps it, and it the state */
            return last_state[slot].st;
        }
        PyErr_Clear(); /* a cached state passed this check once: an error here is no reason to fail */
    }
    PyObject *key = PyLong_FromVoidPtr(obj);
    PyObject *st = key ? PyDict_GetItemWithError(registry, key) : NULL;
    Py_XDECREF(key);
    int alive = st ? is_state_of(st, ref_field, obj) : 0;
    if (alive > 0) {
        PyObject *old_registry = last_state[slot].registry, *old_st = last_state[slot].st;
        last_state[slot].registry = Py_NewRef(registry);
        last_state[slot].st = Py_NewRef(st);
        last_state[slot].obj = obj;
        Py_XDECREF(old_st); /* may free a closed recorder's states: after the cache is consistent */
        Py_XDECREF(old_registry);
    }
    Py_DECREF(registry); /* the recorder keeps the registry, and the registry the state */
    if (!checked) {
        if (alive < 0)
            PyErr_Clear(); /* not checked: the state as the dictionary holds it */
        return st;
    }
    return alive > 0 ? st : NULL;
}

static int
attr_true(PyObject *obj, int field)
{
    PyObject *v = field_get(obj, field);
    if (v == NULL)
        return -1;
    int truth = PyObject_IsTrue(v);
    Py_DECREF(v);
    return truth;
}

static int
attr_is_none(PyObject *obj, int field)
{
    PyObject *v = field_get(obj, field);
    if (v == NULL)
        return -1;
    int none = v == Py_None;
    Py_DECREF(v);
    return none;
}

/* st.<name> += 1; the new value (new reference). */
static PyObject *
increment(PyObject *st, int field)
{
    PyObject *v = field_get(st, field);
    if (v == NULL)
        return NULL;
    PyObject *one = PyLong_FromLong(1);
    PyObject *n = PyNumber_Add(v, one);
    Py_DECREF(one);
    Py_DECREF(v);
    if (n == NULL || field_set(st, field, n) < 0) {
        Py_XDECREF(n);
        return NULL;
    }
    return n;
}

/* Tuples of numbers, strings and None (rows, LRs, gradient states) hold no reference cycle: untracked,
 * the many a buffer keeps add nothing to the garbage collector's work, as CPython itself untracks such
 * tuples when it first collects them. */
static PyObject *
untracked(PyObject *t)
{
    if (t != NULL && PyObject_GC_IsTracked(t))
        PyObject_GC_UnTrack(t);
    return t;
}

/* ``now`` when it holds the very objects of ``prev`` (a tuple or NULL): then ``prev``, so a steady
 * loop allocates no tuple per step. Steals ``now``. */
static PyObject *
same_or(PyObject *prev, PyObject *now)
{
    if (prev == NULL || now == NULL || !PyTuple_CheckExact(prev) || PyTuple_GET_SIZE(prev) != PyTuple_GET_SIZE(now))
        return untracked(now);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(now); i++)
        if (PyTuple_GET_ITEM(prev, i) != PyTuple_GET_ITEM(now, i))
            return untracked(now);
    Py_DECREF(now);
    return Py_NewRef(prev);
}

/* The LR of every group as a tuple of floats; NULL without an error when one is not a float (the
 * Python implementation converts those). */
static PyObject *
read_lrs(PyObject *groups)
{
    PyObject *seq = PySequence_Fast(groups, "param_groups is not a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyTuple_New(n);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *g = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *lr = PyDict_CheckExact(g) ? PyDict_GetItemWithError(g, s_lr) : NULL;
        if (lr == NULL || !PyFloat_CheckExact(lr)) {
            Py_DECREF(out);
            Py_DECREF(seq);
            return NULL; /* an error (set) or a value to convert (not set): both left to Python */
        }
        Py_INCREF(lr);
        PyTuple_SET_ITEM(out, i, lr);
    }
    Py_DECREF(seq);
    return out;
}

static PyObject *last_grads; /* the previous step's gradient states, reused while they are the same */

/* Per group: no gradient, fresh gradient tensors, or the very tensor of the previous step
 * (objects._grad_states). */
static PyObject *
grad_states(PyObject *groups, PyObject *st)
{
    PyObject *seq = PySequence_Fast(groups, "param_groups is not a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyTuple_New(n);
    if (out == NULL)
        goto fail;
    int first = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *g = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *state = GRAD_NONE;
        PyObject *params = PyObject_GetItem(g, s_params);
        if (params == NULL)
            goto fail;
        PyObject *it = PyObject_GetIter(params);
        Py_DECREF(params);
        if (it == NULL)
            goto fail;
        PyObject *p;
        while ((p = PyIter_Next(it)) != NULL) {
            PyObject *grad = PyObject_GetAttr(p, s_grad);
            Py_DECREF(p);
            if (grad == NULL) {
                Py_DECREF(it);
                goto fail;
            }
            if (grad == Py_None) {
                Py_DECREF(grad);
                continue;
            }
            state = GRAD_FRESH;
            if (first) {
                first = 0;
                PyObject *ref = field_get(st, F_OPT_GRAD_REF);
                PyObject *prev = NULL;
                if (ref == NULL || (ref != Py_None && weak_target(ref, &prev) < 0)) {
                    Py_XDECREF(ref);
                    Py_DECREF(grad);
                    Py_DECREF(it);
                    goto fail;
                }
                Py_DECREF(ref);
                if (prev == grad)
                    state = GRAD_SAME;
                PyObject *newref = PyWeakref_NewRef(grad, NULL);
                if (newref == NULL || field_set(st, F_OPT_GRAD_REF, newref) < 0) {
                    Py_XDECREF(newref);
                    Py_DECREF(grad);
                    Py_DECREF(it);
                    goto fail;
                }
                Py_DECREF(newref);
            }
            Py_DECREF(grad);
            break;
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            goto fail;
        Py_INCREF(state);
        PyTuple_SET_ITEM(out, i, state);
    }
    Py_DECREF(seq);
    out = same_or(last_grads, out);
    Py_XSETREF(last_grads, Py_NewRef(out));
    return out;
fail:
    Py_XDECREF(out);
    Py_DECREF(seq);
    return NULL;
}

/* getattr(obj, name, None) as a new reference, NULL without an exception when obj has no such attribute. */
static PyObject *
optional_attr(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear();
    return v;
}

/* ------------------------------------------------------------------------------------ call sites */
static PyObject *
frame_at(Py_ssize_t depth)
{
    PyObject *d = PyLong_FromSsize_t(depth);
    if (d == NULL)
        return NULL;
    PyObject *f = PyObject_CallOneArg(getframe, d);
    Py_DECREF(d);
    return f;
}

static int
frame_lasti(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(f);
#else
    return f->f_lasti < 0 ? -1 : f->f_lasti * (int)sizeof(_Py_CODEUNIT);
#endif
}

/* The kind of a frame's code (-2 when not yet classified, -1 on error). */
static long
code_kind_of(PyFrameObject *f, PyCodeObject **code_out)
{
    PyCodeObject *code = PyFrame_GetCode(f);
    PyObject *key = PyLong_FromVoidPtr(code);
    if (key == NULL) {
        Py_DECREF(code);
        return -1;
    }
    PyObject *kind = PyDict_GetItemWithError(code_kind, key);
    Py_DECREF(key);
    *code_out = code;
    if (kind == NULL)
        return PyErr_Occurred() ? -1 : -2;
    return PyLong_AsLong(kind);
}

/* The registered site of a user frame's very call instruction: >= 0, -2 when unknown, -1 on error. */
static Py_ssize_t
known_site(PyFrameObject *f, PyCodeObject *code)
{
    PyObject *key = Py_BuildValue("(Ni)", PyLong_FromVoidPtr(code), frame_lasti(f));
    if (key == NULL)
        return -1;
    PyObject *sid = PyDict_GetItemWithError(site_ids, key);
    Py_DECREF(key);
    if (sid == NULL)
        return PyErr_Occurred() ? -1 : -2;
    return PyLong_AsSsize_t(sid);
}

/* Per callback: the user code object and instruction of its last site (code objects of sites are kept
 * alive by callsites._codes_kept, so a pointer is never reused for another code). */
static struct {
    PyCodeObject *code;
    int lasti;
    Py_ssize_t sid;
} last_site[4];

/* callsites.call_site(), from C: the frames above are torch's and lrdebug's Python wrappers (this
 * code has no frame of its own). Returns the site (>= -1), or -2 with an exception set. */
static Py_ssize_t
call_site(int hint)
{
    Py_ssize_t depth = depth_hint[hint];
    PyCodeObject *code = NULL;
    if (depth >= 0) {
        PyObject *f = frame_at(depth);
        if (f == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_ValueError))
                return -2;
            PyErr_Clear();
        } else {
            code = PyFrame_GetCode((PyFrameObject *)f);
            int lasti = frame_lasti((PyFrameObject *)f);
            if (code == last_site[hint].code && lasti == last_site[hint].lasti) { /* the same line as last time */
                Py_DECREF(code);
                Py_DECREF(f);
                return last_site[hint].sid;
            }
            Py_DECREF(code);
            long kind = code_kind_of((PyFrameObject *)f, &code);
            Py_ssize_t sid = -2;
            if (kind == KIND_USER)
                sid = known_site((PyFrameObject *)f, code);
            if (sid >= 0) {
                last_site[hint].code = code;
                last_site[hint].lasti = lasti;
                last_site[hint].sid = sid;
            }
            Py_XDECREF(code);
            Py_DECREF(f);
            if (kind == -1 || sid == -1)
                return -2;
            if (sid >= 0)
                return sid;
        }
    }
    depth = 0;
    PyObject *f = frame_at(0);
    if (f == NULL)
        return -2;
    long kind = code_kind_of((PyFrameObject *)f, &code);
    while (kind == KIND_INTERNAL) {
        Py_DECREF(code);
        PyObject *back = (PyObject *)PyFrame_GetBack((PyFrameObject *)f);
        Py_DECREF(f);
        if (back == NULL)
            return -1;
        f = back;
        depth++;
        kind = code_kind_of((PyFrameObject *)f, &code);
    }
    if (kind == -1) {
        Py_DECREF(f);
        return -2;
    }
    if (kind == KIND_USER) {
        Py_ssize_t sid = known_site((PyFrameObject *)f, code);
        if (sid == -1) {
            Py_DECREF(code);
            Py_DECREF(f);
            return -2;
        }
        if (sid >= 0) {
            depth_hint[hint] = depth;
            last_site[hint].code = code;
            last_site[hint].lasti = frame_lasti((PyFrameObject *)f);
            last_site[hint].sid = sid;
            Py_DECREF(code);
            Py_DECREF(f);
            return sid;
        }
    }
    Py_XDECREF(code);
    PyObject *sid = PyObject_CallOneArg(walk_call_site, f); /* a new site: registered in Python */
    Py_DECREF(f);
    if (sid == NULL)
        return -2;
    Py_ssize_t out = PyLong_AsSsize_t(sid);
    Py_DECREF(sid);
    return out == -1 && PyErr_Occurred() ? -2 : out;
}

/* ------------------------------------------------------------------------------------ live checks */
/* Recorder._check_step: the Event fed to the rule engine, its findings reported (strict mode and
 * warning filters raise here: that is returned as FAILED). */
static int
check_step(PyObject *rec, PyObject *checker, PyObject *event, PyObject *seq, PyObject *opt, PyObject *sched,
           PyObject *step, PyObject *lrs, PyObject *grads, Py_ssize_t site, PyObject *origin, PyObject *t0)
{
    PyObject *file = Py_None, *line = Py_None;
    if (site >= 0) {
        PyObject *entry = PyList_GetItem(SITES, site);
        PyObject *framework = PyList_GetItem(FRAMEWORK_SITES, site);
        if (entry == NULL || framework == NULL)
            return FAILED;
        file = PyTuple_GET_ITEM(entry, 0);
        line = PyTuple_GET_ITEM(entry, 1);
        if (framework != Py_None) { /* a framework made this call from the user's line: findings name it */
            PyObject *frameworks = field_get(rec, F_REC_FRAMEWORKS);
            PyObject *key = frameworks ? PyTuple_Pack(3, file, line, event) : NULL;
            int rc = key ? PyObject_SetItem(frameworks, key, framework) : -1;
            Py_XDECREF(key);
            Py_XDECREF(frameworks);
            if (rc < 0)
                return FAILED;
        }
    }
    PyObject *ev = ((PyTypeObject *)Event_type)->tp_alloc((PyTypeObject *)Event_type, 15);
    if (ev == NULL)
        return FAILED;
    PyObject *items[15] = {event, seq, opt, sched, step, lrs, grads, file, line, origin, Py_None, Py_None,
                           Py_None, NULL, t0};
    for (int i = 0; i < 15; i++) {
        PyObject *v = items[i];
        if (v == NULL)
            v = PyLong_FromLong(0);
        else
            Py_INCREF(v);
        PyTuple_SET_ITEM(ev, i, v);
    }
    PyObject *found = PyObject_CallMethodOneArg(checker, s_feed, ev);
    Py_DECREF(ev);
    if (found == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return FAILED;
        /* a bug in a rule stops the checks, never training or recording (Recorder._checks_failed) */
        PyObject *exc = take_exception();
        PyObject *r = PyObject_CallMethodOneArg(rec, s_checks_failed, exc);
        Py_DECREF(exc);
        if (r == NULL)
            return FAILED;
        Py_DECREF(r);
        return DONE;
    }
    Py_ssize_t n = PyObject_Length(found);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PySequence_GetItem(found, i);
        PyObject *r = f ? PyObject_CallMethodOneArg(rec, s_report_finding, f) : NULL;
        Py_XDECREF(f);
        if (r == NULL) {
            Py_DECREF(found);
            return FAILED;
        }
        Py_DECREF(r);
    }
    Py_DECREF(found);
    return n < 0 ? FAILED : DONE;
}

/* A recording error: reported once and recording stops (Recorder._internal_error), training goes on. */
static int
recording_failed(PyObject *rec, const char *callback)
{
    PyObject *exc = take_exception();
    PyObject *msg = PyUnicode_FromFormat("%s: %s: %S", callback, Py_TYPE(exc)->tp_name, exc);
    Py_DECREF(exc);
    if (msg == NULL)
        return FAILED;
    PyObject *r = PyObject_CallMethodOneArg(rec, s_internal_error, msg);
    Py_DECREF(msg);
    if (r == NULL)
        return FAILED;
    Py_DECREF(r);
    return DONE;
}

/* ------------------------------------------------------------------------------------ callbacks */
/* Recorder.optimizer_pre(opt, args, kwargs): the LRs this step will use, and its start time. */
static int
optimizer_pre(PyObject *rec, PyObject *const *a)
{
    PyObject *opt = a[0], *args = a[1], *kwargs = a[2];
    PyObject *st = lookup_state(rec, F_REC_OPTS, opt, 1);
    if (st == NULL)
        return PyErr_Occurred() ? recording_failed(rec, "optimizer_pre") : DELEGATE;
    Py_INCREF(st);
    int rc = DELEGATE;
    PyObject *groups = NULL, *lrs = NULL, *t0 = NULL, *depth = NULL;
    int on = attr_true(rec, F_REC_ENABLED);
    if (on <= 0) {
        rc = on < 0 ? FAILED : DONE;
        goto out;
    }
    /* step(closure), GradScaler, sampled updates, CUDA timing: the Python implementation */
    if (!PyTuple_Check(args) || PyTuple_GET_SIZE(args) > 1 || (kwargs != Py_None && PyObject_IsTrue(kwargs)))
        goto out;
    depth = PyDict_GetItemWithError(patching_globals, s_scaler_depth);
    if (depth == NULL || PyObject_IsTrue(depth))
        goto out_err;
    int sampling = attr_true(rec, F_REC_SAMPLE_UPDATES), timing = attr_true(rec, F_REC_CUDA_TIMING);
    if (sampling || timing)
        goto out_err;
    groups = PyObject_GetAttr(opt, s_param_groups);
    if (groups == NULL)
        goto out_err;
    lrs = read_lrs(groups);
    if (lrs == NULL)
        goto out_err;
    PyObject *prev = field_get(st, F_OPT_LRS);
    if (prev == NULL)
        goto out_err;
    lrs = same_or(prev, lrs);
    Py_DECREF(prev);
    t0 = now_ns();
    if (t0 == NULL || field_set(st, F_OPT_SCALED, Py_False) < 0 || field_set(st, F_OPT_LRS, lrs) < 0 ||
        field_set(st, F_OPT_T0, t0) < 0)
        goto out_err;
    rc = DONE;
    goto out;
out_err:
    rc = PyErr_Occurred() ? recording_failed(rec, "optimizer_pre") : DELEGATE;
out:
    Py_XDECREF(t0);
    Py_XDECREF(lrs);
    Py_XDECREF(groups);
    Py_DECREF(st);
    return rc;
}

/* Recorder.optimizer_post(opt, args, kwargs): one row of the step buffer, then the live checks. */
static int
optimizer_post(PyObject *rec, PyObject *const *a)
{
    PyObject *opt = a[0];
    PyObject *t1 = now_ns();
    if (t1 == NULL)
        return FAILED;
    PyObject *st = lookup_state(rec, F_REC_OPTS, opt, 0);
    if (st == NULL) {
        Py_DECREF(t1);
        return PyErr_Occurred() ? recording_failed(rec, "optimizer_post") : DONE;
    }
    Py_INCREF(st);
    int rc = DONE;
    PyObject *t0 = NULL, *groups = NULL, *grads = NULL, *last_t = NULL, *iter_ns = NULL, *wait = NULL,
             *step = NULL, *seq = NULL, *lrs = NULL, *index = NULL, *dur = NULL, *row = NULL, *buf = NULL,
             *sid = NULL, *checker = NULL, *counter = NULL;
    Py_ssize_t site = -1;
    t0 = field_get(st, F_OPT_T0);
    if (t0 == NULL)
        goto fail;
    int started = PyObject_IsTrue(t0), on = attr_true(rec, F_REC_ENABLED);
    if (started < 0 || on < 0)
        goto fail;
    if (!started || !on)
        goto out;
    /* CUDA timing, sampled updates, a fused step under GradScaler: the Python implementation */
    int no_cuda = attr_is_none(st, F_OPT_CUDA), no_sample = attr_is_none(st, F_OPT_SAMPLED), scaled = attr_true(st, F_OPT_SCALED);
    if (no_cuda < 0 || no_sample < 0 || scaled < 0)
        goto fail;
    if (!no_cuda || !no_sample || scaled) {
        rc = DELEGATE;
        goto out;
    }
    PyObject *zero = PyLong_FromLong(0);
    int set = field_set(st, F_OPT_T0, zero);
    Py_DECREF(zero);
    if (set < 0)
        goto fail;
    site = call_site(SITE_OPTIMIZER);
    if (site == -2)
        goto fail;
    groups = PyObject_GetAttr(opt, s_param_groups);
    if (groups == NULL || (grads = grad_states(groups, st)) == NULL)
        goto fail;
    last_t = field_get(st, F_OPT_LAST_T);
    if (last_t == NULL)
        goto fail;
    int had = PyObject_IsTrue(last_t);
    if (had < 0)
        goto fail;
    if (had) {
        if ((iter_ns = PyNumber_Subtract(t1, last_t)) == NULL)
            goto fail;
    } else {
        iter_ns = Py_NewRef(Py_None);
    }
    if (field_set(st, F_OPT_LAST_T, t1) < 0)
        goto fail;
    wait = field_get(rec, F_REC_DATA_WAIT);
    if (wait == NULL)
        goto fail;
    int waited = PyObject_IsTrue(wait);
    if (waited < 0)
        goto fail;
    if (waited) {
        zero = PyLong_FromLong(0);
        set = field_set(rec, F_REC_DATA_WAIT, zero);
        Py_DECREF(zero);
        if (set < 0)
            goto fail;
    } else {
        Py_SETREF(wait, Py_NewRef(Py_None));
    }
    if ((step = increment(st, F_OPT_STEPS)) == NULL)
        goto fail;
    counter = field_get(rec, F_REC_SEQ);
    if (counter == NULL || (seq = PyIter_Next(counter)) == NULL)
        goto fail;
    lrs = field_get(st, F_OPT_LRS);
    index = field_get(st, F_OPT_INDEX);
    dur = PyNumber_Subtract(t1, t0);
    sid = PyLong_FromSsize_t(site);
    if (lrs == NULL || index == NULL || dur == NULL || sid == NULL)
        goto fail;
    row = PyTuple_Pack(12, EV_OPTIMIZER_STEP, seq, t0, dur, index, step, sid, lrs, grads, iter_ns, wait, Py_None);
    buf = field_get(rec, F_REC_BUF);
    if (row == NULL || buf == NULL || !PyList_Check(buf))
        goto fail;
    /* One list operation: the writer thread only ever sees whole rows (Recorder._drain). */
    Py_ssize_t n = PyList_GET_SIZE(buf);
    if (PyList_SetSlice(buf, n, n, row) < 0)
        goto fail;
    PyObject *flush_len = field_get(rec, F_REC_FLUSH_LEN);
    if (flush_len == NULL)
        goto fail;
    Py_ssize_t limit = PyLong_AsSsize_t(flush_len);
    Py_DECREF(flush_len);
    if (limit == -1 && PyErr_Occurred())
        goto fail;
    if (PyList_GET_SIZE(buf) >= limit) {
        PyObject *r = PyObject_CallMethodNoArgs(rec, s_buffer_filled);
        if (r == NULL)
            goto fail;
        Py_DECREF(r);
    }
    checker = field_get(rec, F_REC_CHECKER);
    if (checker == NULL)
        goto fail;
    if (checker != Py_None)
        rc = check_step(rec, checker, EV_OPTIMIZER_STEP, seq, index, Py_None, step, lrs, grads, site, Py_None, t0);
    goto out;
fail:
    rc = recording_failed(rec, "optimizer_post");
out:
    Py_XDECREF(counter);
    Py_XDECREF(checker);
    Py_XDECREF(buf);
    Py_XDECREF(row);
    Py_XDECREF(sid);
    Py_XDECREF(dur);
    Py_XDECREF(index);
    Py_XDECREF(lrs);
    Py_XDECREF(seq);
    Py_XDECREF(step);
    Py_XDECREF(wait);
    Py_XDECREF(iter_ns);
    Py_XDECREF(last_t);
    Py_XDECREF(grads);
    Py_XDECREF(groups);
    Py_XDECREF(t0);
    Py_DECREF(st);
    Py_DECREF(t1);
    return rc;
}

/* An event row of Recorder.other (the layout of tracefile/columns.py's OTHER_FIELDS). */
static PyObject *
other_row(PyObject *event, PyObject *seq, PyObject *t0, PyObject *dur, PyObject *opt, PyObject *sched,
          PyObject *step, PyObject *site, PyObject *lrs, PyObject *origin, PyObject *value)
{
    PyObject *n = Py_None;
    return untracked(PyTuple_Pack(18, event, seq, t0, dur, opt, sched, step, site, lrs, n, origin, n, value, n, n,
                                  n, n, n));
}

static int
append_other(PyObject *rec, PyObject *row)
{
    PyObject *other = field_get(rec, F_REC_OTHER);
    if (other == NULL)
        return -1;
    int rc = PyList_Append(other, row);
    Py_DECREF(other);
    return rc;
}

/* A scheduler step's or zero_grad's row: its call site and number, appended to Recorder.other.
 * Returns the site (>= -1) with *seq_out set (a new reference), or -2 with an exception set. */
static Py_ssize_t
record_other(PyObject *rec, int hint, PyObject *event, PyObject *t0, PyObject *t1, PyObject *opt, PyObject *sched,
             PyObject *step, PyObject *lrs, PyObject *origin, PyObject *value, PyObject **seq_out)
{
    Py_ssize_t site = call_site(hint);
    if (site == -2)
        return -2;
    PyObject *counter = field_get(rec, F_REC_SEQ);
    PyObject *seq = counter ? PyIter_Next(counter) : NULL;
    Py_XDECREF(counter);
    if (seq == NULL)
        return -2;
    PyObject *dur = PyNumber_Subtract(t1, t0), *sid = PyLong_FromSsize_t(site);
    PyObject *row = dur && sid ? other_row(event, seq, t0, dur, opt, sched, step, sid, lrs, origin, value) : NULL;
    Py_XDECREF(dur);
    Py_XDECREF(sid);
    int rc = row ? append_other(rec, row) : -1;
    Py_XDECREF(row);
    if (rc < 0) {
        Py_DECREF(seq);
        return -2;
    }
    *seq_out = seq;
    return site;
}

/* Recorder.scheduler_step(sched, t0, t1, parent, in_init, metric): a user's step of a known
 * scheduler of a known optimizer, with float LRs and no metric. */
static int
scheduler_step(PyObject *rec, PyObject *const *a)
{
    PyObject *sched = a[0], *t0 = a[1], *t1 = a[2], *parent = a[3], *in_init = a[4], *metric = a[5];
    PyObject *st = lookup_state(rec, F_REC_SCHEDS, sched, 1);
    if (st == NULL)
        return PyErr_Occurred() ? recording_failed(rec, "scheduler_step") : DELEGATE;
    Py_INCREF(st);
    int rc = DELEGATE;
    PyObject *opt = NULL, *ost = NULL, *groups = NULL, *lrs = NULL, *horizon = NULL, *opt_index = NULL,
             *step = NULL, *sched_index = NULL, *seq = NULL, *checker = NULL, *steps = NULL;
    int on = attr_true(rec, F_REC_ENABLED);
    if (on <= 0) {
        rc = on < 0 ? FAILED : DONE;
        goto out;
    }
    if (parent != Py_None || metric != Py_None || PyObject_IsTrue(in_init))
        goto out;
    opt = PyObject_GetAttr(sched, s_optimizer);
    if (opt == NULL) {
        PyErr_Clear(); /* a duck-typed scheduler: the Python implementation */
        goto out;
    }
    ost = field_get(st, F_SCHED_OST);
    if (ost == NULL)
        goto fail;
    if (ost == Py_None)
        goto out;
    PyObject *ref = field_get(ost, F_OPT_REF), *target = NULL;
    int wrc = ref ? weak_target(ref, &target) : -1;
    Py_XDECREF(ref);
    if (wrc < 0)
        goto fail;
    if (target != opt)
        goto out;
    groups = PyObject_GetAttr(opt, s_param_groups);
    if (groups == NULL)
        goto fail;
    if ((lrs = untracked(read_lrs(groups))) == NULL)
        goto maybe_fail;
    horizon = field_get(st, F_SCHED_HORIZON);
    if (horizon == NULL)
        goto fail;
    if (horizon != Py_None) { /* the user may have resized the schedule: the Python implementation reads it */
        PyObject *now = optional_attr(sched, PyTuple_GET_ITEM(horizon, 0));
        if (now == NULL && PyErr_Occurred())
            goto fail;
        int same = now ? PyObject_RichCompareBool(now, PyTuple_GET_ITEM(horizon, 1), Py_EQ) : 0;
        Py_XDECREF(now);
        if (same < 0)
            goto fail;
        if (!same)
            goto out;
    }
    opt_index = field_get(ost, F_OPT_INDEX);
    step = field_get(ost, F_OPT_STEPS);
    sched_index = field_get(st, F_SCHED_INDEX);
    if (opt_index == NULL || step == NULL || sched_index == NULL || (steps = increment(st, F_SCHED_STEPS)) == NULL)
        goto fail;
    Py_ssize_t site = record_other(rec, SITE_SCHEDULER, EV_SCHEDULER_STEP, t0, t1, opt_index, sched_index, step, lrs,
                                   ORIGIN_USER, Py_None, &seq);
    if (site == -2)
        goto fail;
    rc = DONE;
    checker = field_get(rec, F_REC_CHECKER);
    if (checker == NULL)
        goto fail;
    if (checker != Py_None) {
        PyObject *none = PyTuple_New(0);
        rc = check_step(rec, checker, EV_SCHEDULER_STEP, seq, opt_index, sched_index, step, lrs, none, site,
                        ORIGIN_USER, t0);
        Py_DECREF(none);
    }
    goto out;
maybe_fail:
    if (!PyErr_Occurred())
        goto out;
fail:
    rc = recording_failed(rec, "scheduler_step");
out:
    Py_XDECREF(steps);
    Py_XDECREF(checker);
    Py_XDECREF(seq);
    Py_XDECREF(sched_index);
    Py_XDECREF(step);
    Py_XDECREF(opt_index);
    Py_XDECREF(horizon);
    Py_XDECREF(lrs);
    Py_XDECREF(groups);
    Py_XDECREF(ost);
    Py_XDECREF(opt);
    Py_DECREF(st);
    return rc;
}

/* Recorder.zero_grad(obj, origin, t0, t1, in_place). */
static int
zero_grad(PyObject *rec, PyObject *const *a, Py_ssize_t nargs)
{
    PyObject *obj = a[0], *origin = a[1], *t0 = a[2], *t1 = a[3];
    PyObject *in_place = nargs > 4 ? a[4] : Py_False;
    int on = attr_true(rec, F_REC_ENABLED);
    if (on <= 0)
        return on < 0 ? recording_failed(rec, "zero_grad") : DONE;
    PyObject *index = Py_None, *seq = NULL, *checker = NULL, *value = Py_None;
    int rc = DONE;
    int placed = PyObject_IsTrue(in_place);
    if (placed < 0)
        goto fail;
    if (placed)
        value = PyFloat_FromDouble(1.0);
    else
        Py_INCREF(value);
    Py_INCREF(index);
    int optimizer = PyUnicode_Check(origin) && PyUnicode_Compare(origin, s_optimizer_origin) == 0;
    if (optimizer) {
        PyObject *st = lookup_state(rec, F_REC_OPTS, obj, 1);
        if (st == NULL) {
            rc = PyErr_Occurred() ? recording_failed(rec, "zero_grad") : DELEGATE;
            goto out;
        }
        Py_SETREF(index, field_get(st, F_OPT_INDEX));
        if (index == NULL)
            goto fail;
    }
    if (record_other(rec, SITE_ZERO_GRAD, EV_ZERO_GRAD, t0, t1, index, Py_None, Py_None, Py_None, origin, value,
                     &seq) == -2)
        goto fail;
    checker = field_get(rec, F_REC_CHECKER);
    if (checker == NULL)
        goto fail;
    if (checker != Py_None) { /* the only rule state a zero_grad changes; it finds nothing by itself */
        PyObject *r = PyObject_CallMethodObjArgs(checker, s_zero_grad, seq, placed ? Py_True : Py_False, NULL);
        if (r == NULL)
            rc = FAILED;
        Py_XDECREF(r);
    }
    goto out;
fail:
    rc = recording_failed(rec, "zero_grad");
out:
    Py_XDECREF(checker);
    Py_XDECREF(seq);
    Py_XDECREF(index);
    Py_XDECREF(value);
    return rc;
}

/* ------------------------------------------------------------------------------------ Hook */
typedef int (*callback_fn)(PyObject *rec, PyObject *const *args, Py_ssize_t nargs);

static int optimizer_pre_cb(PyObject *r, PyObject *const *a, Py_ssize_t n) { return optimizer_pre(r, a); }
static int optimizer_post_cb(PyObject *r, PyObject *const *a, Py_ssize_t n) { return optimizer_post(r, a); }
static int scheduler_step_cb(PyObject *r, PyObject *const *a, Py_ssize_t n) { return scheduler_step(r, a); }

static const struct {
    const char *name;
    callback_fn fn;
    Py_ssize_t min_args, max_args;
} CALLBACKS[] = {
    {"optimizer_pre", optimizer_pre_cb, 3, 3},
    {"optimizer_post", optimizer_post_cb, 3, 3},
    {"scheduler_step", scheduler_step_cb, 6, 6},
    {"zero_grad", zero_grad, 4, 5},
};
#define N_CALLBACKS (sizeof(CALLBACKS) / sizeof(CALLBACKS[0]))

typedef struct {
    PyObject_HEAD
    PyObject *sink;
    PyObject *name;
    int which;
    vectorcallfunc vectorcall;
} Hook;

static PyObject *
Hook_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Hook *h = (Hook *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *target = field_get(h->sink, F_SINK_TARGET);
    if (target == NULL)
        return NULL;
    int rc = DELEGATE;
    if (bound && kwnames == NULL && nargs >= CALLBACKS[h->which].min_args && nargs <= CALLBACKS[h->which].max_args
        && Py_IS_TYPE(target, (PyTypeObject *)Recorder_type))
        rc = CALLBACKS[h->which].fn(target, args, nargs);
    if (rc == DELEGATE) {
        PyObject *method = PyObject_GetAttr(target, h->name);
        PyObject *r = method ? PyObject_Vectorcall(method, args, nargsf, kwnames) : NULL;
        Py_XDECREF(method);
        Py_DECREF(target);
        return r;
    }
    Py_DECREF(target);
    if (rc == FAILED)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Hook_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *sink, *name;
    if (!PyArg_ParseTuple(args, "OU:Hook", &sink, &name))
        return NULL;
    int which = -1;
    for (size_t i = 0; i < N_CALLBACKS; i++)
        if (PyUnicode_CompareWithASCIIString(name, CALLBACKS[i].name) == 0)
            which = (int)i;
    if (which < 0) {
        PyErr_Format(PyExc_ValueError, "no compiled callback %R", name);
        return NULL;
    }
    Hook *h = (Hook *)type->tp_alloc(type, 0);
    if (h == NULL)
        return NULL;
    h->sink = Py_NewRef(sink);
    h->name = Py_NewRef(name);
    h->which = which;
    h->vectorcall = Hook_vectorcall;
    return (PyObject *)h;
}

static int
Hook_traverse(Hook *h, visitproc visit, void *arg)
{
    Py_VISIT(h->sink);
    return 0;
}

static int
Hook_clear(Hook *h)
{
    Py_CLEAR(h->sink);
    return 0;
}

static void
Hook_dealloc(Hook *h)
{
    PyObject_GC_UnTrack(h);
    Hook_clear(h);
    Py_CLEAR(h->name);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyObject *
Hook_repr(Hook *h)
{
    return PyUnicode_FromFormat("<lrdebug compiled hook %U>", h->name);
}

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lrdebug.record._hot.Hook",
    .tp_doc = "Hook(sink, name): calls the compiled callback `name` of sink.target, or its Python method.",
    .tp_basicsize = sizeof(Hook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Hook, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = Hook_new,
    .tp_traverse = (traverseproc)Hook_traverse,
    .tp_clear = (inquiry)Hook_clear,
    .tp_dealloc = (destructor)Hook_dealloc,
    .tp_repr = (reprfunc)Hook_repr,
};

/* ------------------------------------------------------------------------------------ Method */
/* A scheduler class's patched step() or get_lr(), or an optimizer's or module's zero_grad(), in C:
 * patching's Python wrapper stays the reference, called for every unusual call (the first step, whose
 * PyTorch warnings it re-issues at the user's line; a subclass's step() calling super().step();
 * zero_grad with arguments), and answers for the wrapper's attributes (__wrapped__, __name__,
 * __doc__). Binds to instances like a function. */
enum { METHOD_STEP = 0, METHOD_GET_LR = 1, METHOD_ZERO_GRAD = 2 };

typedef struct {
    PyObject_HEAD
    PyObject *fn;      /* the class's own method */
    PyObject *python;  /* patching's wrapper */
    PyObject *record;  /* step: the scheduler_step Hook; get_lr: the sink */
    PyObject *local;   /* patching._local (per-thread stacks) */
    PyObject *origin;  /* zero_grad: whose method it is ("optimizer" or "module") */
    int kind;
    vectorcallfunc vectorcall;
} Method;

static PyObject *s_sched_stack, *s_init_stack, *s_init_depth, *s_step_count, *s_metrics, *s_get_lr_call, *one;

/* init_depth and local.init_stack: a constructor is running. -1 on error. */
static int
in_constructor(PyObject *local)
{
    PyObject *depth = PyDict_GetItemWithError(patching_globals, s_init_depth);
    if (depth == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int deep = PyObject_IsTrue(depth);
    if (deep <= 0)
        return deep;
    PyObject *stack = PyObject_GetAttr(local, s_init_stack);
    if (stack == NULL)
        return -1;
    int truth = PyObject_IsTrue(stack);
    Py_DECREF(stack);
    return truth;
}

static PyObject *
Method_step(Method *m, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || !bound)
        return PyObject_Vectorcall(m->python, args, nargsf, kwnames);
    PyObject *sched = args[0];
    /* Attributes are read with getattr, never through __dict__: reading that slows the scheduler's
     * own methods on CPython 3.11-3.12 (objects.keep_attributes_fast). */
    PyObject *count = optional_attr(sched, s_step_count);
    if (count == NULL && PyErr_Occurred())
        return NULL;
    int first = count ? PyObject_RichCompareBool(count, one, Py_EQ) : 0;
    Py_XDECREF(count);
    if (first < 0)
        return NULL;
    PyObject *stack = PyObject_GetAttr(m->local, s_sched_stack);
    if (stack == NULL)
        return NULL;
    Py_ssize_t depth = PyList_Check(stack) ? PyList_GET_SIZE(stack) : -1;
    if (first || depth < 0 || (depth > 0 && PyList_GET_ITEM(stack, depth - 1) == sched)) {
        Py_DECREF(stack);
        return PyObject_Vectorcall(m->python, args, nargsf, kwnames);
    }
    PyObject *parent = depth > 0 ? PyList_GET_ITEM(stack, depth - 1) : Py_None;
    Py_INCREF(parent);
    int init = in_constructor(m->local);
    PyObject *t0 = init < 0 ? NULL : now_ns();
    if (t0 == NULL || PyList_Append(stack, sched) < 0) {
        Py_XDECREF(t0);
        Py_DECREF(parent);
        Py_DECREF(stack);
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(m->fn, args, nargsf, kwnames);
    PyObject *exc = result == NULL ? take_exception() : NULL;
    PyObject *t1 = now_ns();
    Py_ssize_t n = PyList_GET_SIZE(stack);
    int popped = n > 0 ? PyList_SetSlice(stack, n - 1, n, NULL) : 0;
    PyObject *metric = Py_None;
    if (nargs > 1) {
        metric = args[1];
    } else if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            if (PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, i), s_metrics) == 0)
                metric = args[nargs + i];
    }
    PyObject *recorded = NULL;
    if (t1 != NULL && popped == 0) {
        PyObject *call[6] = {sched, t0, t1, parent, init ? Py_True : Py_False, metric};
        recorded = PyObject_Vectorcall(m->record, call, 6, NULL);
    }
    Py_XDECREF(t1);
    Py_DECREF(t0);
    Py_DECREF(parent);
    Py_DECREF(stack);
    if (recorded == NULL) { /* as a Python `finally`: its exception replaces the step's */
        Py_XDECREF(exc);
        Py_XDECREF(result);
        return NULL;
    }
    Py_DECREF(recorded);
    if (exc != NULL) {
#if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(exc);
#else
        PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
        return NULL;
    }
    return result;
}

static PyObject *
Method_get_lr(Method *m, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || !bound)
        return PyObject_Vectorcall(m->python, args, nargsf, kwnames);
    PyObject *sched = args[0];
    PyObject *stack = PyObject_GetAttr(m->local, s_sched_stack);
    if (stack == NULL)
        return NULL;
    if (!PyList_Check(stack)) {
        Py_DECREF(stack);
        return PyObject_Vectorcall(m->python, args, nargsf, kwnames);
    }
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    int own = depth > 0 && PyList_GET_ITEM(stack, depth - 1) == sched;
    Py_DECREF(stack);
    if (!own) { /* only a scheduler's own step (or constructor) may compute its get_lr() */
        int init = in_constructor(m->local);
        if (init < 0)
            return NULL;
        if (!init) {
            PyObject *target = field_get(m->record, F_SINK_TARGET);
            PyObject *r = target ? PyObject_CallMethodOneArg(target, s_get_lr_call, sched) : NULL;
            Py_XDECREF(target);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
        }
    }
    return PyObject_Vectorcall(m->fn, args, nargsf, kwnames);
}

/* patching's zero_grad wrapper: the call timed and recorded (an exception propagates unrecorded). */
static PyObject *
Method_zero_grad(Method *m, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL || !bound) /* set_to_none given: Python reads it */
        return PyObject_Vectorcall(m->python, args, nargsf, kwnames);
    PyObject *t0 = now_ns();
    if (t0 == NULL)
        return NULL;
    PyObject *out = PyObject_Vectorcall(m->fn, args, 1, NULL);
    PyObject *t1 = out ? now_ns() : NULL;
    PyObject *recorded = NULL;
    if (t1 != NULL) {
        PyObject *call[5] = {args[0], m->origin, t0, t1, Py_False};
        recorded = PyObject_Vectorcall(m->record, call, 5, NULL);
    }
    Py_XDECREF(t1);
    Py_DECREF(t0);
    if (recorded == NULL) {
        Py_XDECREF(out);
        return NULL;
    }
    Py_DECREF(recorded);
    return out;
}

static PyObject *
Method_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *fn, *python, *record, *local, *origin = Py_None;
    const char *kind;
    if (!PyArg_ParseTuple(args, "sOOOO|O:Method", &kind, &fn, &python, &record, &local, &origin))
        return NULL;
    int k = strcmp(kind, "step") == 0      ? METHOD_STEP
            : strcmp(kind, "get_lr") == 0  ? METHOD_GET_LR
            : strcmp(kind, "zero_grad") == 0 ? METHOD_ZERO_GRAD
                                           : -1;
    if (k < 0) {
        PyErr_Format(PyExc_ValueError, "no compiled method %s", kind);
        return NULL;
    }
    Method *m = (Method *)type->tp_alloc(type, 0);
    if (m == NULL)
        return NULL;
    m->fn = Py_NewRef(fn);
    m->python = Py_NewRef(python);
    m->record = Py_NewRef(record);
    m->local = Py_NewRef(local);
    m->origin = Py_NewRef(origin);
    m->kind = k;
    m->vectorcall = k == METHOD_STEP     ? (vectorcallfunc)Method_step
                    : k == METHOD_GET_LR ? (vectorcallfunc)Method_get_lr
                                         : (vectorcallfunc)Method_zero_grad;
    return (PyObject *)m;
}

static PyObject *
Method_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

/* The wrapper's attributes are the Python wrapper's (__wrapped__, __name__, __doc__, _lrdebug_patched). */
static PyObject *
Method_getattro(Method *m, PyObject *name)
{
    return PyObject_GetAttr(m->python, name);
}

static int
Method_setattro(Method *m, PyObject *name, PyObject *value)
{
    return PyObject_SetAttr(m->python, name, value);
}

static int
Method_traverse(Method *m, visitproc visit, void *arg)
{
    Py_VISIT(m->fn);
    Py_VISIT(m->python);
    Py_VISIT(m->record);
    Py_VISIT(m->local);
    Py_VISIT(m->origin);
    return 0;
}

static int
Method_clear(Method *m)
{
    Py_CLEAR(m->fn);
    Py_CLEAR(m->python);
    Py_CLEAR(m->record);
    Py_CLEAR(m->local);
    Py_CLEAR(m->origin);
    return 0;
}

static void
Method_dealloc(Method *m)
{
    PyObject_GC_UnTrack(m);
    Method_clear(m);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *
Method_repr(Method *m)
{
    return PyUnicode_FromFormat("<lrdebug compiled wrapper of %R>", m->fn);
}

static PyTypeObject MethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lrdebug.record._hot.Method",
    .tp_basicsize = sizeof(Method),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(Method, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = Method_descr_get,
    .tp_getattro = (getattrofunc)Method_getattro,
    .tp_setattro = (setattrofunc)Method_setattro,
    .tp_new = Method_new,
    .tp_traverse = (traverseproc)Method_traverse,
    .tp_clear = (inquiry)Method_clear,
    .tp_dealloc = (destructor)Method_dealloc,
    .tp_repr = (reprfunc)Method_repr,
};

/* ------------------------------------------------------------------------------------ module */
static int
take(PyObject *ns, const char *key, PyObject **slot)
{
    PyObject *v = PyDict_GetItemString(ns, key);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "bind(): missing %s", key);
        return -1;
    }
    Py_XSETREF(*slot, Py_NewRef(v));
    return 0;
}

static PyObject *
bind(PyObject *module, PyObject *ns)
{
    if (!PyDict_Check(ns)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes a dict");
        return NULL;
    }
    if (take(ns, "Recorder", &Recorder_type) || take(ns, "Event", &Event_type) || take(ns, "code_kind", &code_kind)
        || take(ns, "site_ids", &site_ids) || take(ns, "SITES", &SITES)
        || take(ns, "FRAMEWORK_SITES", &FRAMEWORK_SITES) || take(ns, "walk_call_site", &walk_call_site)
        || take(ns, "patching_globals", &patching_globals) || take(ns, "getframe", &getframe)
        || take(ns, "perf_counter_ns", &perf_counter_ns) || take(ns, "GRAD_NONE", &GRAD_NONE)
        || take(ns, "GRAD_FRESH", &GRAD_FRESH) || take(ns, "GRAD_SAME", &GRAD_SAME)
        || take(ns, "OPTIMIZER_STEP", &EV_OPTIMIZER_STEP) || take(ns, "SCHEDULER_STEP", &EV_SCHEDULER_STEP)
        || take(ns, "ZERO_GRAD", &EV_ZERO_GRAD) || take(ns, "ORIGIN_USER", &ORIGIN_USER))
        return NULL;
    if (!PyType_Check(Recorder_type) || !PyType_Check(Event_type) || !PyDict_Check(code_kind)
        || !PyDict_Check(site_ids) || !PyList_Check(SITES) || !PyList_Check(FRAMEWORK_SITES)
        || !PyDict_Check(patching_globals)) {
        PyErr_SetString(PyExc_TypeError, "bind(): an object of the wrong type");
        return NULL;
    }
    PyObject *user = PyDict_GetItemString(ns, "KIND_USER"), *internal = PyDict_GetItemString(ns, "KIND_INTERNAL");
    if (user == NULL || internal == NULL) {
        PyErr_SetString(PyExc_KeyError, "bind(): missing KIND_USER or KIND_INTERNAL");
        return NULL;
    }
    KIND_USER = PyLong_AsLong(user);
    KIND_INTERNAL = PyLong_AsLong(internal);
    if (PyErr_Occurred())
        return NULL;
    if (bind_fields(ns) < 0)
        return NULL;
    for (int i = 0; i < 4; i++) {
        depth_hint[i] = -1;
        last_site[i].code = NULL;
    }
    bound = 1;
    Py_RETURN_NONE;
}

/* The fields read through PyObject_GetAttr because their class keeps them in no slot (a test keeps it empty). */
static PyObject *
slow_fields(PyObject *module, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < N_FIELDS; i++) {
        if (fields[i].type != NULL)
            continue;
        PyObject *name = PyUnicode_FromFormat("%s.%s", owner_keys[fields[i].owner], fields[i].text);
        if (name == NULL || PyList_Append(out, name) < 0)
            Py_CLEAR(out);
        Py_XDECREF(name);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_O, "bind(namespace): the Python objects the compiled callbacks share with recorder.py"},
    {"slow_fields", slow_fields, METH_NOARGS, "slow_fields(): per-event attributes not read at a slot's offset"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lrdebug.record._hot",
    "The compiled hot path of the recorder (see lrdebug/record/hotpath.py).", -1, methods,
};

#define INTERN(var, text)                                    \
    do {                                                     \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            return NULL;                                     \
    } while (0)

PyMODINIT_FUNC
PyInit__hot(void)
{
    INTERN(s_param_groups, "param_groups");
    INTERN(s_lr, "lr");
    INTERN(s_params, "params");
    INTERN(s_grad, "grad");
    INTERN(s_buffer_filled, "_buffer_filled");
    INTERN(s_feed, "feed");
    INTERN(s_report_finding, "_report_finding");
    INTERN(s_checks_failed, "_checks_failed");
    INTERN(s_internal_error, "_internal_error");
    INTERN(s_scaler_depth, "scaler_depth");
    INTERN(s_optimizer, "optimizer");
    INTERN(s_zero_grad, "zero_grad");
    INTERN(s_optimizer_origin, "optimizer");
    INTERN(s_sched_stack, "sched_stack");
    INTERN(s_init_stack, "init_stack");
    INTERN(s_init_depth, "init_depth");
    INTERN(s_step_count, "_step_count");
    INTERN(s_metrics, "metrics");
    INTERN(s_get_lr_call, "get_lr_call");
    if ((one = PyLong_FromLong(1)) == NULL)
        return NULL;
    if (PyType_Ready(&HookType) < 0 || PyType_Ready(&MethodType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Hook", (PyObject *)&HookType) < 0
        || PyModule_AddObjectRef(m, "Method", (PyObject *)&MethodType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
