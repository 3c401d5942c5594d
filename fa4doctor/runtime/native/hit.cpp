// The hit path of fa4doctor.dispatch.attention(), compiled: the same key, the same plans, no
// Python frame and no Python objects for shapes and devices.
//
// Why: a tiny FA4 call costs ~100 us of host time on an H100 (docs/sources.md#fa4-start-up-cost).
// A Python function with attention()'s signature that only reads the 9 tensor attributes its key needs costs
// 2.2-5.2 us right after that call (docs/validation/h100-bench-lanes), over the 2% of issue 3.
// Here the reads are fields of at::Tensor, the keywords are compared in place and the plan found in
// a hash table: one probe on the key's hash, whatever the number of entries (issue 14: a linear scan
// of 256 entries, forgotten all at once when full, added 9.5-11.3 us a call to a job cycling through
// 300-1,000 sequence lengths). A full table evicts one entry, chosen by CLOCK.
//
// Contract with fa4doctor/runtime/dispatcher.py (tests/runtime/test_native.py holds the two equal):
// - `attention` takes the runtime's exact signature. It serves a call itself only when q, k and v
//   are plain tensors passed by position, the call has no ALiBi, sink or variable-length argument
//   and qkv_format is "bshd", and a remembered entry matches it; everything else goes, untouched,
//   to the Python `attention` given to `configure`, which validates, decides and calls `remember`.
// - An entry matches when what runtime.py's key holds for such a call is equal: shape, dtype and
//   device of q, k and v; grad mode and requires_grad; the six keywords (by ==, as a tuple key
//   compares); the four policy variables in os.environ's own dict. Where the plan holds no length
//   (`remember`'s lengths_free, from runtime/plan_class.py), the sequence lengths are compared only as
//   the rules read them (`lengths_free` below): one entry serves every length of the plan's class, so
//   a job cycling through 10,000 lengths hits one entry that stays in cache, not 10,000 that do not.
// - A hit does what runtime.py's hit does: tally.n += 1; counters.flush() once counters.deadline
//   has passed (only where counters has a metrics directory); then plan.run(q, k, v, None, None,
//   None), or, where the adapter gave one, its `direct` call: the backend's own function with the
//   keywords run would pass, saving run's Python frame (~0.5 us beside FA4 on the H100). `run` and
//   `direct` are the plan's when it was remembered (a plan never changes them; the bench, which
//   swaps them, forgets the entries after each swap).
// - Beside FA4 every memory access here runs with cold caches (FA4's launch path is ~100 us of
//   Python), so the hit path touches as little as it can: the policy variables are re-read only
//   after os.environ's dict changed (a dict watcher, Python >= 3.12; every call before that).
#include <Python.h>
#include <structmember.h>
#include <time.h>

#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kMaxDim = 4;  // bshd; a tensor of more dims goes to Python, which says what is wrong
// As many as dispatcher.py's _MAX_PLANS: issue 14's 10,000 distinct shapes with room (256 B each, 4 MiB).
constexpr size_t kMaxEntries = 16384;
// The index: open addressing with linear probing, at most half full, so a miss ends at an empty slot
// after ~1.5 probes on average (Knuth, TAOCP vol. 3, 6.4, Algorithm L).
constexpr size_t kSlots = 2 * kMaxEntries;
constexpr size_t kSlotMask = kSlots - 1;
static_assert((kSlots & kSlotMask) == 0, "kSlots must be a power of two");
constexpr int32_t kEmpty = -1;

// attention()'s keyword-only parameters, in its order.
enum Kw { kMask, kWindow, kScale, kDropout, kSoftcap, kAlibi, kSink, kDeterministic, kFormat, kCuQ, kCuKv,
          kMaxQ, kMaxKv, kNumKw };
const char* const kKwNames[kNumKw] = {
    "attn_mask_type", "window_size", "softmax_scale", "dropout_p", "softcap", "alibi_slopes",
    "learnable_sink", "deterministic", "qkv_format", "cu_seqlens_q", "cu_seqlens_kv", "max_seqlen_q",
    "max_seqlen_kv"};
// The keywords an entry holds; the others are None (and qkv_format "bshd") on this path.
constexpr int kKeyed[] = {kMask, kWindow, kScale, kDropout, kSoftcap, kDeterministic};
constexpr int kNumKeyed = sizeof(kKeyed) / sizeof(kKeyed[0]);
constexpr int kRare[] = {kAlibi, kSink, kCuQ, kCuKv, kMaxQ, kMaxKv};
constexpr int kNumEnv = 4;

// q, k and v's shapes, dtypes and devices, and whether autograd records the call: zero-filled
// first, so two keys are equal exactly when their bytes are (one memcmp, no padding left unset).
struct Key {
  uint64_t hash;
  int8_t ndim[3], dtype[3], device_type[3], device_index[3];
  bool needs_grad;
  int64_t sizes[3][kMaxDim];  // dims past ndim stay 0
};

// What a hit reads comes first, in four cache lines: with 10,000 entries the table is far larger
// than L2, and every line a hit touches is a likely miss (issue 14's bench/dynamic_shapes.py).
struct alignas(64) Entry {
  Key key;
  PyObject* kw[kNumKeyed];  // strong references
  PyObject* env[kNumEnv];   // strong references; Py_None where the variable is unset
  PyObject* run;            // plan.run and plan.direct, as they were when remembered (strong, as
  PyObject* direct;         // every pointer below)
  PyObject* tally;
  PyObject* counters;
  int32_t n_offset;         // where tally.n lives (a __slots__ member), or -1: by name (32 bits:
  int32_t deadline_offset;  // a member's offset is small); the same for counters.deadline
  bool flushes;             // counters.directory was set: its deadline is read per call
  bool referenced;          // hit since CLOCK's hand last passed: spared once
  PyObject* plan;
};
static_assert(sizeof(Entry) == 256, "an entry is four cache lines");

struct State {
  PyObject* slow = nullptr;         // runtime.attention (Python)
  PyObject* environ = nullptr;      // os.environ._data
  PyObject* env_keys[kNumEnv] = {};
  PyObject* names[kNumKw] = {};     // interned keyword names
  PyObject* defaults[kNumKw] = {};  // attention.__kwdefaults__, in kKwNames order
  PyObject* bshd = nullptr;
  PyObject *s_run = nullptr, *s_n = nullptr, *s_deadline = nullptr, *s_flush = nullptr, *s_direct = nullptr,
           *one = nullptr;
  std::vector<Entry> entries;  // in no order: `index` finds them, CLOCK's `hand` walks them
  std::vector<int32_t> index;  // kSlots positions in `entries` (kEmpty: none), by key.hash; made at first use
  size_t hand = 0;
  unsigned long long hits = 0, misses = 0, evictions = 0;
  // The policy variables' values (strong), read again only after os.environ changed: a dict
  // watcher (Python >= 3.12) marks them stale. Without one they are read on every call.
  PyObject* env_now[kNumEnv] = {};
  bool env_stale = true;
  int watcher = -1;
  // A keyword's __eq__ runs Python while `find` walks the entries; if that Python calls back in,
  // the call goes the Python way, and a forget waits until the walk is over.
  bool walking = false, forget_pending = false;
};
State g;

bool read_tensor(PyObject* obj, Key* key, int i, bool* requires_grad) {
  // Exactly torch.Tensor or Parameter: a subclass may answer .shape differently (__torch_function__).
  if (!THPVariable_CheckExact(obj)) return false;
  const at::Tensor& t = THPVariable_Unpack(obj);
  if (!t.defined() || t.is_nested() || t.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) return false;
  auto sizes = t.sizes();
  if (sizes.size() > static_cast<size_t>(kMaxDim)) return false;
  key->ndim[i] = static_cast<int8_t>(sizes.size());
  std::memcpy(key->sizes[i], sizes.data(), sizes.size() * sizeof(int64_t));
  key->dtype[i] = static_cast<int8_t>(t.scalar_type());
  key->device_type[i] = static_cast<int8_t>(t.device().type());
  key->device_index[i] = t.device().index();
  *requires_grad = *requires_grad || t.requires_grad();
  return true;
}

uint64_t mix(uint64_t h, uint64_t x) { return (h ^ x) * 0x100000001b3ULL; }  // FNV-1a step

// The key's hash, over everything in it but the hash.
void seal(Key* key) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int i = 0; i < 3; ++i) {
    for (int d = 0; d < key->ndim[i]; ++d) h = mix(h, static_cast<uint64_t>(key->sizes[i][d]));
    h = mix(h, (static_cast<uint64_t>(key->ndim[i]) << 24) | (static_cast<uint64_t>(static_cast<uint8_t>(key->dtype[i])) << 16) |
                   (static_cast<uint64_t>(static_cast<uint8_t>(key->device_type[i])) << 8) |
                   static_cast<uint8_t>(key->device_index[i]));
  }
  // MurmurHash3's fmix64: FNV's low bits depend only on its inputs' low bits, and the index slot is
  // taken from the low bits, so lengths that differ only above them (multiples of 1024) would collide.
  h = mix(h, key->needs_grad);
  h = (h ^ (h >> 33)) * 0xff51afd7ed558ccdULL;
  h = (h ^ (h >> 33)) * 0xc4ceb9fe1a85ec53ULL;
  key->hash = h ^ (h >> 33);
}

// The call's exact key, not yet sealed.
bool read_key(PyObject* const* tensors, Key* key) {
  std::memset(key, 0, sizeof(Key));
  bool any_grad = false;
  for (int i = 0; i < 3; ++i)
    if (!read_tensor(tensors[i], key, i, &any_grad)) return false;
  key->needs_grad = c10::GradMode::is_enabled() && any_grad;
  return true;
}

// dispatch/spec.py MAX_SEQLEN: a longer sequence is an error that Python names.
constexpr int64_t kMaxSeqlen = 2147483647;

// The key of the call's class of lengths (runtime/plan_class.py `lengths`, for a plan that holds no
// length itself): the three sequence lengths (dim 1 of bshd) replaced by what the rules, the adapters
// and validation read of them: which side is longer, a decode (seqlen_q == 1), an empty side, k and
// v alike, both within kMaxSeqlen. Negative, so never equal to an exact key's lengths. False for a
// tensor that is not bshd. A twin of `lengths` in Python: tests/runtime/test_plan_class.py's property
// test over random lengths runs through this path in scripts/test.sh's native pass, and fails if a
// call is served from another class's entry.
bool lengths_free(const Key& exact, Key* key) {
  for (int i = 0; i < 3; ++i)
    if (exact.ndim[i] != kMaxDim) return false;
  *key = exact;
  int64_t q = exact.sizes[0][1], kv = exact.sizes[1][1], v = exact.sizes[2][1];
  int64_t reads = ((q > kv) - (q < kv) + 1) | (q == 1) << 2 | (q == 0) << 3 | (kv == 0) << 4 | (kv == v) << 5 |
                  (q <= kMaxSeqlen && kv <= kMaxSeqlen) << 6;
  key->sizes[0][1] = -1 - reads;
  key->sizes[1][1] = key->sizes[2][1] = -1;
  seal(key);
  return true;
}

// -1: an error was raised (and cleared: the caller goes the Python way); 0: differ; 1: equal.
int equal(PyObject* a, PyObject* b) {
  if (a == b) return 1;
  int eq = PyObject_RichCompareBool(a, b, Py_EQ);
  if (eq < 0) PyErr_Clear();
  return eq;
}

// Fills kw[] (borrowed) from a vectorcall; false when the call is not one this path serves.
bool read_keywords(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames, PyObject** kw) {
  std::memcpy(kw, g.defaults, sizeof(g.defaults));
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    PyObject* name = PyTuple_GET_ITEM(kwnames, i);
    int found = -1;
    for (int j = 0; j < kNumKw && found < 0; ++j)
      if (name == g.names[j]) found = j;
    for (int j = 0; j < kNumKw && found < 0; ++j)  // a keyword name that was not interned
      if (PyUnicode_Compare(name, g.names[j]) == 0) found = j;
    if (PyErr_Occurred()) PyErr_Clear();
    if (found < 0) return false;  // q=..., or a name attention() does not take
    kw[found] = args[nargs + i];
  }
  for (int r : kRare)
    if (kw[r] != Py_None) return false;
  return kw[kFormat] == g.bshd || equal(kw[kFormat], g.bshd) == 1;
}

void read_env(PyObject** env) {  // borrowed; Py_None where unset, as runtime.py's data.get()
  if (g.watcher >= 0 && !g.env_stale) {
    std::memcpy(env, g.env_now, sizeof(g.env_now));
    return;
  }
  for (int i = 0; i < kNumEnv; ++i) {
    PyObject* value = PyDict_GetItemWithError(g.environ, g.env_keys[i]);
    if (!value && PyErr_Occurred()) PyErr_Clear();
    env[i] = value ? value : Py_None;
    if (g.watcher >= 0) Py_XSETREF(g.env_now[i], Py_NewRef(env[i]));
  }
  g.env_stale = false;
}

#if PY_VERSION_HEX >= 0x030C0000
// Called before any change to os.environ's dict (PEP 509's successor, Include/cpython/dictobject.h).
int environ_changed(PyDict_WatchEvent, PyObject* dict, PyObject*, PyObject*) {
  if (dict == g.environ) g.env_stale = true;
  return 0;
}

void watch_environ() {
  if (g.watcher < 0) g.watcher = PyDict_AddWatcher(environ_changed);
  if (g.watcher >= 0 && PyDict_Watch(g.watcher, g.environ) < 0) {
    PyErr_Clear();
    PyDict_ClearWatcher(g.watcher);
    g.watcher = -1;
  }
  if (g.watcher < 0) PyErr_Clear();  // none free: read the variables on every call
  g.env_stale = true;
}
#else
void watch_environ() { g.env_stale = true; }
#endif

// The index of the entry that matches, -1 for none, -2 when a comparison raised. Entries with the
// same hash (the same tensors under other keywords, or a collision) sit on one probe run, each
// compared in full; nothing changes the table during the walk (`find`).
long walk(const Key& key, PyObject* const* kw, PyObject* const* env) {
  if (g.index.empty()) return -1;
  for (size_t s = key.hash & kSlotMask;; s = (s + 1) & kSlotMask) {
    int32_t i = g.index[s];
    if (i == kEmpty) return -1;  // the index is at most half full: every run ends
    const Entry& e = g.entries[static_cast<size_t>(i)];
    if (e.key.hash != key.hash || std::memcmp(&e.key, &key, sizeof(Key)) != 0) continue;
    bool same = true;
    for (int j = 0; j < kNumKeyed && same; ++j) {
      int eq = equal(e.kw[j], kw[kKeyed[j]]);
      if (eq < 0) return -2;
      same = eq == 1;
    }
    for (int j = 0; j < kNumEnv && same; ++j) {
      int eq = equal(e.env[j], env[j]);
      if (eq < 0) return -2;
      same = eq == 1;
    }
    if (same) return static_cast<long>(i);
  }
}

size_t home(int32_t i) { return g.entries[static_cast<size_t>(i)].key.hash & kSlotMask; }

void link(int32_t i) {
  size_t s = home(i);
  while (g.index[s] != kEmpty) s = (s + 1) & kSlotMask;
  g.index[s] = i;
}

// Takes entry i out of the index, shifting later members of its probe run back into the hole, so
// no tombstones pile up (Knuth, TAOCP vol. 3, 6.4, Algorithm R).
void unlink(int32_t i) {
  size_t hole = home(i);
  while (g.index[hole] != i) hole = (hole + 1) & kSlotMask;
  for (size_t s = (hole + 1) & kSlotMask; g.index[s] != kEmpty; s = (s + 1) & kSlotMask) {
    // It may move back unless its home lies cyclically in (hole, s].
    if (((s - home(g.index[s])) & kSlotMask) >= ((s - hole) & kSlotMask)) {
      g.index[hole] = g.index[s];
      hole = s;
    }
  }
  g.index[hole] = kEmpty;
}

// CLOCK (second chance): the first entry from the hand on that was not hit since the hand last
// passed it; at most one sweep clears every mark, so this ends within two.
size_t victim() {
  for (;;) {
    size_t at = g.hand;
    g.hand = (g.hand + 1) % g.entries.size();
    if (!g.entries[at].referenced) return at;
    g.entries[at].referenced = false;
  }
}

void forget_all();

long find(const Key& key, PyObject* const* kw, PyObject* const* env) {
  if (g.walking) return -1;  // called back from a comparison inside the walk below
  g.walking = true;
  for (int j = 0; j < kNumEnv; ++j) Py_INCREF(env[j]);  // borrowed from os.environ, which a comparison may change
  long at = walk(key, kw, env);
  for (int j = 0; j < kNumEnv; ++j) Py_DECREF(env[j]);
  g.walking = false;
  if (g.forget_pending) {  // a comparison asked to forget: do it now, and serve nothing remembered
    g.forget_pending = false;
    forget_all();
    return -1;
  }
  return at;
}

void release(Entry& e) {
  for (PyObject* o : e.kw) Py_DECREF(o);
  for (PyObject* o : e.env) Py_DECREF(o);
  for (PyObject* o : {e.plan, e.run, e.direct, e.tally, e.counters}) Py_DECREF(o);
}

void forget_all() {
  if (g.walking) {
    g.forget_pending = true;
    return;
  }
  std::vector<Entry> old;
  old.swap(g.entries);  // a __del__ run by a DECREF below sees an empty table, not a half-freed one
  std::fill(g.index.begin(), g.index.end(), kEmpty);
  g.hand = 0;
  for (Entry& e : old) release(e);
}

double monotonic() {  // time.monotonic() on Linux (CPython's pytime.c uses CLOCK_MONOTONIC)
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Where `name` lives in type(obj)'s __slots__ (metrics.Tally.n, DispatchCounters.deadline), so a
// hit reads and writes it in place, as the slot's own descriptor would; -1 where it is anything else.
Py_ssize_t slot_offset(PyObject* obj, PyObject* name) {
  PyObject* descr = _PyType_Lookup(Py_TYPE(obj), name);  // borrowed
  if (!descr || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) return -1;
  PyMemberDef* member = reinterpret_cast<PyMemberDescrObject*>(descr)->d_member;
  return member->type == T_OBJECT_EX && !(member->flags & READONLY) ? member->offset : -1;
}

PyObject** slot(PyObject* obj, Py_ssize_t offset) {
  return reinterpret_cast<PyObject**>(reinterpret_cast<char*>(obj) + offset);
}

// obj.name, a new reference: from its slot where `offset` found one, else by name.
PyObject* get(PyObject* obj, Py_ssize_t offset, PyObject* name) {
  if (offset < 0) return PyObject_GetAttr(obj, name);
  PyObject* value = *slot(obj, offset);
  if (!value) PyErr_SetObject(PyExc_AttributeError, name);  // an unset slot, as the descriptor says
  return Py_XNewRef(value);
}

bool add_one(PyObject* tally, Py_ssize_t offset) {
  PyObject* n = get(tally, offset, g.s_n);
  if (!n) return false;
  PyObject* next = PyNumber_Add(n, g.one);
  Py_DECREF(n);
  if (!next) return false;
  if (offset >= 0) {
    Py_XSETREF(*slot(tally, offset), next);
    return true;
  }
  int set = PyObject_SetAttr(tally, g.s_n, next);
  Py_DECREF(next);
  return set == 0;
}

// tally.n += 1, and counters.flush() once counters.deadline has passed: runtime.py's hit, in C.
// counters is null where it has no metrics directory: then there is no file to refresh, ever
// (metrics.DispatchCounters sets a directory only when it is made, and only ever clears it).
bool count(const Entry& e) {
  // Own what this uses: flush() runs Python, which may reset the plans and drop the entry.
  PyObject *tally = Py_NewRef(e.tally), *counters = e.flushes ? Py_NewRef(e.counters) : nullptr;
  Py_ssize_t deadline_at = e.deadline_offset;
  bool ok = add_one(tally, e.n_offset);
  Py_DECREF(tally);
  if (!ok || !counters) {
    Py_XDECREF(counters);
    return ok;
  }
  PyObject* deadline = get(counters, deadline_at, g.s_deadline);
  double due = deadline ? PyFloat_AsDouble(deadline) : -1.0;
  Py_XDECREF(deadline);
  if (due == -1.0 && PyErr_Occurred()) ok = false;
  else if (monotonic() >= due) {
    PyObject* done = PyObject_CallMethodNoArgs(counters, g.s_flush);
    Py_XDECREF(done);
    ok = done != nullptr;
  }
  Py_DECREF(counters);
  return ok;
}

// direct = (func, names, values): func(q=q, k=k, v=v, **dict(zip(names[3:], values))), its first
// element kept when it returns a tuple or list (adapters.unwrap), exactly as the adapter's run does.
PyObject* call_direct(PyObject* direct, PyObject* const* tensors) {
  constexpr Py_ssize_t kMaxArgs = 16;
  PyObject *func, *names, *values;
  Py_ssize_t n;
  if (!PyTuple_Check(direct) || PyTuple_GET_SIZE(direct) != 3 ||
      !PyTuple_Check(names = PyTuple_GET_ITEM(direct, 1)) || !PyTuple_Check(values = PyTuple_GET_ITEM(direct, 2)) ||
      (n = PyTuple_GET_SIZE(names)) != 3 + PyTuple_GET_SIZE(values) || n > kMaxArgs) {
    PyErr_SetString(PyExc_TypeError, "plan.direct must be (func, names, values) with q, k, v named first");
    return nullptr;
  }
  func = PyTuple_GET_ITEM(direct, 0);
  PyObject* call[kMaxArgs] = {tensors[0], tensors[1], tensors[2]};
  for (Py_ssize_t i = 3; i < n; ++i) call[i] = PyTuple_GET_ITEM(values, i - 3);
  PyObject* out = PyObject_Vectorcall(func, call, 0, names);
  if (out && (PyTuple_Check(out) || PyList_Check(out))) {
    PyObject* first = PySequence_GetItem(out, 0);
    Py_DECREF(out);
    return first;
  }
  return out;
}

// The backend's own function called with the plan's keywords (adapters.Direct), or plan.run.
PyObject* call_plan(PyObject* run, PyObject* direct, PyObject* const* tensors) {
  if (direct != Py_None) return call_direct(direct, tensors);
  PyObject* call[6] = {tensors[0], tensors[1], tensors[2], Py_None, Py_None, Py_None};
  return PyObject_Vectorcall(run, call, 6, nullptr);
}

PyObject* attention(PyObject*, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  if (!g.slow) {
    PyErr_SetString(PyExc_RuntimeError, "fa4doctor native hit path used before configure()");
    return nullptr;
  }
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* kw[kNumKw];
  PyObject* env[kNumEnv];
  Key key;
  long at = -1;
  if (nargs == 3 && read_keywords(args, nargs, kwnames, kw) && read_key(args, &key)) {
    read_env(env);
    Key free;  // most plans hold no length: one entry serves every length of the class
    if (lengths_free(key, &free)) at = find(free, kw, env);
    if (at == -1) {
      seal(&key);
      at = find(key, kw, env);
    }
  }
  if (at < 0) {
    ++g.misses;
    return PyObject_Vectorcall(g.slow, args, nargsf, kwnames);
  }
  ++g.hits;
  Entry& e = g.entries[static_cast<size_t>(at)];
  if (!e.referenced) e.referenced = true;  // read first: a line written on every hit must be written back
  // Own what the call uses: a reset inside flush() or the kernel may drop the entry meanwhile.
  PyObject *run = Py_NewRef(e.run), *direct = Py_NewRef(e.direct);
  bool counted = count(e);  // `e` is not used after this
  PyObject* out = counted ? call_plan(run, direct, args) : nullptr;
  Py_DECREF(run);
  Py_DECREF(direct);
  return out;
}

// remember(plan, q, k, v, attn_mask_type, window_size, softmax_scale, dropout_p, softcap, deterministic
//          [, lengths_free]): lengths_free true keeps the plan for every length of the call's class
// (`lengths_free` above), false (the default) for the call's exact lengths.
PyObject* remember(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 + kNumKeyed && nargs != 5 + kNumKeyed) {
    PyErr_SetString(PyExc_TypeError, "remember() takes plan, q, k, v, the six keyed keywords and lengths_free");
    return nullptr;
  }
  int free = nargs == 5 + kNumKeyed ? PyObject_IsTrue(args[4 + kNumKeyed]) : 0;
  if (free < 0) return nullptr;
  Key exact, key;
  // Not a call this path can serve, or called back from a comparison while the entries are walked.
  if (!g.slow || g.walking || !read_key(args + 1, &exact)) Py_RETURN_FALSE;
  if (!free || !lengths_free(exact, &key)) {
    key = exact;
    seal(&key);
  }
  // The plan's parts, owned by the entry (each a new reference, or null on an error). Read before
  // `find`, since reading them may run Python: from `find` on, nothing runs Python until the entry is in.
  PyObject* plan = args[0];
  const char* const parts[] = {"run", "direct", "tally", "counters"};
  PyObject* got[4] = {};
  for (int i = 0; i < 4; ++i) {
    if (!(got[i] = PyObject_GetAttrString(plan, parts[i]))) {
      for (PyObject* o : got) Py_XDECREF(o);
      return nullptr;
    }
  }
  PyObject* directory = PyObject_GetAttrString(got[3], "directory");
  if (!directory) {
    for (PyObject* o : got) Py_DECREF(o);
    return nullptr;
  }
  bool flushes = directory != Py_None;
  Py_DECREF(directory);
  PyObject* kw[kNumKw];
  std::memcpy(kw, g.defaults, sizeof(kw));
  for (int j = 0; j < kNumKeyed; ++j) kw[kKeyed[j]] = args[4 + j];
  Entry fresh;
  read_env(fresh.env);
  for (PyObject* o : fresh.env) Py_INCREF(o);  // owned before `find`, whose comparisons may change os.environ
  long at = find(key, kw, fresh.env);
  if (at == -2) {
    for (PyObject* o : got) Py_DECREF(o);
    for (PyObject* o : fresh.env) Py_DECREF(o);
    Py_RETURN_FALSE;
  }
  fresh.key = key;
  for (int j = 0; j < kNumKeyed; ++j) fresh.kw[j] = Py_NewRef(kw[kKeyed[j]]);
  fresh.plan = Py_NewRef(plan);
  fresh.run = got[0];
  fresh.direct = got[1];
  fresh.tally = got[2];
  fresh.counters = got[3];
  fresh.n_offset = static_cast<int32_t>(slot_offset(fresh.tally, g.s_n));
  fresh.deadline_offset = static_cast<int32_t>(slot_offset(fresh.counters, g.s_deadline));
  fresh.flushes = flushes;
  fresh.referenced = false;  // a hit marks it; until then it is the first CLOCK may evict
  if (at >= 0) {  // the same key decided again (after a reset of runtime.py's plans): the new plan wins
    Entry old = g.entries[static_cast<size_t>(at)];
    g.entries[static_cast<size_t>(at)] = fresh;
    release(old);
    Py_RETURN_TRUE;
  }
  if (g.index.empty()) g.index.assign(kSlots, kEmpty);
  if (g.entries.size() < kMaxEntries) {
    g.entries.push_back(fresh);
    link(static_cast<int32_t>(g.entries.size() - 1));
    Py_RETURN_TRUE;
  }
  // Full: one entry makes room, never all. The table is whole again before its references go, since
  // a __del__ they run may call back in.
  int32_t at_victim = static_cast<int32_t>(victim());
  unlink(at_victim);
  Entry old = g.entries[static_cast<size_t>(at_victim)];
  g.entries[static_cast<size_t>(at_victim)] = fresh;
  link(at_victim);
  ++g.evictions;
  release(old);
  Py_RETURN_TRUE;
}

PyObject* forget(PyObject*, PyObject*) {
  forget_all();
  Py_RETURN_NONE;
}

PyObject* stats(PyObject*, PyObject*) {
  return Py_BuildValue("{s:n,s:n,s:K,s:K,s:K}", "entries", static_cast<Py_ssize_t>(g.entries.size()), "capacity",
                       static_cast<Py_ssize_t>(kMaxEntries), "hits", g.hits, "misses", g.misses, "evictions",
                       g.evictions);
}

// configure(slow, environ_data, env_keys): slow is runtime.attention; its __kwdefaults__ give the defaults.
PyObject* configure(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyDict_Check(args[1]) || !PyTuple_Check(args[2]) || PyTuple_GET_SIZE(args[2]) != kNumEnv) {
    PyErr_SetString(PyExc_TypeError, "configure(slow, environ_data: dict, env_keys: 4-tuple)");
    return nullptr;
  }
  PyObject* defaults = PyObject_GetAttrString(args[0], "__kwdefaults__");
  if (!defaults) return nullptr;
  PyObject* found[kNumKw];
  for (int j = 0; j < kNumKw; ++j) {
    found[j] = PyDict_Check(defaults) ? PyDict_GetItemString(defaults, kKwNames[j]) : nullptr;
    if (!found[j]) {
      Py_DECREF(defaults);
      return PyErr_Format(PyExc_TypeError, "slow path has no keyword %s", kKwNames[j]);
    }
  }
  forget_all();
  for (int j = 0; j < kNumKw; ++j) {
    Py_XSETREF(g.defaults[j], Py_NewRef(found[j]));
    if (!g.names[j]) g.names[j] = PyUnicode_InternFromString(kKwNames[j]);
  }
  Py_DECREF(defaults);
  Py_XSETREF(g.slow, Py_NewRef(args[0]));
  Py_XSETREF(g.environ, Py_NewRef(args[1]));
  watch_environ();
  for (int i = 0; i < kNumEnv; ++i) Py_XSETREF(g.env_keys[i], Py_NewRef(PyTuple_GET_ITEM(args[2], i)));
  if (!g.bshd) g.bshd = PyUnicode_InternFromString("bshd");
  if (!g.s_run) {
    g.s_run = PyUnicode_InternFromString("run");
    g.s_n = PyUnicode_InternFromString("n");
    g.s_deadline = PyUnicode_InternFromString("deadline");
    g.s_flush = PyUnicode_InternFromString("flush");
    g.s_direct = PyUnicode_InternFromString("direct");
    g.one = PyLong_FromLong(1);
  }
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"attention", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(attention)),
     METH_FASTCALL | METH_KEYWORDS,
     "attention($module, q, k, v, *, attn_mask_type='no_mask', window_size=None, softmax_scale=None, "
     "dropout_p=0.0, softcap=0.0, alibi_slopes=None, learnable_sink=None, deterministic=False, "
     "qkv_format='bshd', cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None)\n--\n\n"
     "fa4doctor.dispatch.attention with its hit path compiled: the arguments and what they mean are\n"
     "fa4doctor.runtime.dispatcher.python_attention's, which runs every call this path does not serve."},
    {"remember", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(remember)), METH_FASTCALL,
     "Keep a plan for the call these arguments make."},
    {"forget", forget, METH_NOARGS, "Drop every remembered plan."},
    {"stats", stats, METH_NOARGS, "Entries, hits and misses so far."},
    {"configure", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(configure)), METH_FASTCALL,
     "Set the Python path and the environment this module reads."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "fa4doctor_native_hit", "fa4doctor's compiled dispatch hit path.",
                       -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit_fa4doctor_native_hit() { return PyModule_Create(&kModule); }
