// The extension module: error translation and the futures C++ completions resolve.
#include <pthread.h>

#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <thread>

#include "bindings.hpp"

namespace meshckpt::python {

namespace {

// Never destroyed, like the library's own threads: the reaper thread waits on `pending_cv` for
// the life of the process, and glibc's pthread_cond_destroy waits for a condition variable's
// waiters to leave, so destroying it among the static destructors at exit hung the process.
std::mutex& pending_mu = *new std::mutex;
std::condition_variable& pending_cv = *new std::condition_variable;
long pending = 0;  // futures not resolved, deletions not done
std::vector<std::function<void()>>& graveyard = *new std::vector<std::function<void()>>;
bool reaper_started = false;

// True on a library thread while it runs Python code (resolving a future, releasing objects).
thread_local bool in_library_callback = false;

struct library_callback_scope {
  bool old = in_library_callback;
  library_callback_scope() { in_library_callback = true; }
  ~library_callback_scope() { in_library_callback = old; }
};

void reaper() {
  ::pthread_setname_np(::pthread_self(), "meshckpt-reaper");
  std::unique_lock lk(pending_mu);
  for (;;) {
    pending_cv.wait(lk, [] { return !graveyard.empty(); });
    auto work = std::move(graveyard);
    graveyard.clear();
    lk.unlock();
    for (auto& w : work) w();
    lk.lock();
    pending -= static_cast<long>(work.size());
    pending_cv.notify_all();
  }
}

// The name of errors.py's class for `e`.
const char* class_for(const error& e) {
  if (e.code.category() == meshckpt_category()) {
    switch (static_cast<errc>(e.code.value())) {
      case errc::invalid_argument: return "InvalidArgumentError";
      case errc::not_found: return "NotFoundError";
      case errc::checksum_mismatch: return "ChecksumMismatchError";
      case errc::corrupt_manifest:
      case errc::short_read:
      case errc::unsafe_path:
      case errc::unsupported_version: return "CorruptCheckpointError";
      case errc::dtype_mismatch:
      case errc::shape_mismatch:
      case errc::layout_mismatch: return "MismatchError";
      case errc::cancelled: return "CancelledError";
      case errc::timed_out: return "TimedOutError";
      case errc::locked: return "LockedError";
      case errc::unsupported: return "UnsupportedError";
      default: return "MeshckptError";
    }
  }
  if (e.code.category() == std::system_category() || e.code.category() == std::generic_category()) {
    if (e.code.value() == ENOENT) return "NotFoundError";
    if (e.code.value() == ENOMEM) return "OutOfMemoryError";
    return "MeshckptIOError";
  }
  return "MeshckptError";
}

}  // namespace

py::object to_exception(const error& e) {
  py::object cls = py::module_::import("meshckpt.errors").attr(class_for(e));
  const bool meshckpt_code = e.code.category() == meshckpt_category();
  return cls.attr("_make")(e.what(), meshckpt_code ? e.code.value() : 0, meshckpt_code ? 0 : e.code.value());
}

namespace {
bool exiting = false;  // set by drain: no new python_section opens
int in_python = 0;     // python_sections open (under pending_mu)

bool interpreter_running() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsInitialized() && !Py_IsFinalizing();
#else
  return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}
}  // namespace

python_section::python_section() {
  {
    std::lock_guard lk(pending_mu);
    if (exiting || !interpreter_running()) return;
    ++in_python;
  }
  gil_.emplace();
}

python_section::~python_section() {
  if (!gil_) return;
  gil_.reset();
  std::lock_guard lk(pending_mu);
  if (--in_python == 0) pending_cv.notify_all();
}

void delete_outside_library(std::function<void()> del) {
  if (!in_library_callback) {
    py::gil_scoped_release nogil;
    del();
    return;
  }
  std::lock_guard lk(pending_mu);
  if (!reaper_started) {
    std::thread(reaper).detach();
    reaper_started = true;
  }
  graveyard.push_back(std::move(del));
  ++pending;
  pending_cv.notify_all();
}

py_refs::~py_refs() {
  python_section py;
  if (!py.ok()) {
    for (auto& o : objs_) o.release();  // the interpreter is going away: leak, never touch it
    for (auto& b : bufs_) b.release();
    return;
  }
  library_callback_scope in_callback;
  for (auto& b : bufs_) PyBuffer_Release(b.get());
  bufs_.clear();
  objs_.clear();
}

namespace {
void resolved() {
  std::lock_guard lk(pending_mu);
  if (--pending == 0) pending_cv.notify_all();
}
}  // namespace

future_slot::holder::~holder() {
  // An operation whose completion was dropped without being called (a start that threw) still
  // resolves its future, so that neither its waiter nor the exit drain waits forever.
  const bool unresolved = !done.exchange(true);
  python_section py;
  if (!py.ok()) {
    obj.release();
  } else {
    library_callback_scope in_callback;
    if (unresolved) obj.attr("set_exception")(to_exception(make_error(errc::cancelled, "the operation ended without an outcome")));
    obj = py::object();
  }
  if (unresolved) resolved();
}

future_slot::future_slot(py::object fut) : fut_(std::make_shared<holder>()) {
  fut_->obj = std::move(fut);
  fut_->obj.attr("_meshckpt_started") = true;
  std::lock_guard lk(pending_mu);
  ++pending;
}

void future_slot::set(std::function<py::object()> make_value) const {
  if (fut_->done.exchange(true)) return;
  if (python_section py; py.ok()) {
    library_callback_scope in_callback;
    try {
      fut_->obj.attr("set_result")(make_value());
    } catch (error_exception& e) {
      fut_->obj.attr("set_exception")(to_exception(e.e));
    } catch (py::error_already_set& e) {
      fut_->obj.attr("set_exception")(e.value());
    }
  }
  resolved();
}

void future_slot::fail(const error& e) const {
  if (fut_->done.exchange(true)) return;
  if (python_section py; py.ok()) {
    library_callback_scope in_callback;
    fut_->obj.attr("set_exception")(to_exception(e));
  }
  resolved();
}

void drain() {
  py::gil_scoped_release nogil;
  std::unique_lock lk(pending_mu);
  pending_cv.wait(lk, [] { return pending == 0; });
  exiting = true;
  pending_cv.wait(lk, [] { return in_python == 0; });
}

}  // namespace meshckpt::python

namespace py = pybind11;

PYBIND11_MODULE(_meshckpt, m) {
  namespace mp = meshckpt::python;
  m.doc() = "meshckpt's C++ core (use the `meshckpt` package)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const mp::error_exception& e) {
      py::object exc = mp::to_exception(e.e);
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });
  m.def("_drain", &mp::drain, "Waits until every meshckpt future is resolved (called at exit).");
  py::class_<mp::stop_handle>(m, "StopHandle")
      .def(py::init<>())
      .def("__call__", &mp::stop_handle::request, "Requests the operation's stop.");
  mp::bind_tensors(m);
  mp::bind_torch_state(m);
  mp::bind_checkpoint(m);
  mp::bind_store_coordinator(m);
}
