// Shared parts of the Python extension `meshckpt._meshckpt`: error translation, the Python
// objects kept alive by saves, and the futures that C++ completions resolve.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "meshckpt/error.hpp"
#include "meshckpt/io/backend.hpp"

namespace meshckpt::python {

namespace py = pybind11;

// A meshckpt error on its way to Python: the translator registered in module.cpp raises the
// exception class of meshckpt/errors.py that matches its code.
struct error_exception {
  error e;
};

// Throws `r`'s error as an error_exception, or returns its value.
template <class T>
T unwrap(result<T> r) {
  if (!r) throw error_exception{r.error()};
  if constexpr (!std::is_void_v<T>) return std::move(r).value();
}

// The Python exception object for `e` (an instance of the matching meshckpt.errors class).
py::object to_exception(const error& e);

// The GIL, taken by any thread, unless the interpreter is exiting: then `ok()` is false and the
// caller must leak what it holds instead of touching Python. Once the exit drain (`drain`) has
// begun, no new section opens, and the drain waits for those open: a library thread never
// blocks on the GIL while the interpreter finalizes (Python would end that thread with
// pthread_exit, which a C++ thread turns into std::terminate).
class python_section {
 public:
  python_section();
  ~python_section();
  python_section(const python_section&) = delete;
  python_section& operator=(const python_section&) = delete;
  bool ok() const { return gil_.has_value(); }

 private:
  std::optional<py::gil_scoped_acquire> gil_;
};

// Python objects owned by C++ that may be released on a library thread: the destructor takes
// the GIL (or, during interpreter shutdown, leaks them instead of touching a dead interpreter).
class py_refs {
 public:
  py_refs() = default;
  py_refs(const py_refs&) = delete;
  py_refs& operator=(const py_refs&) = delete;
  ~py_refs();
  void add(py::object o) { objs_.push_back(std::move(o)); }
  // Keeps a buffer export (Py_buffer) until destruction; the exporter cannot resize meanwhile.
  void add_buffer(std::unique_ptr<Py_buffer> b) { bufs_.push_back(std::move(b)); }

 private:
  std::vector<py::object> objs_;
  std::vector<std::unique_ptr<Py_buffer>> bufs_;
};

// A concurrent.futures.Future resolved from a library thread. Counted while unresolved, so that
// interpreter exit can wait for every operation to finish (`drain`).
class future_slot {
 public:
  // Takes a concurrent.futures.Future the caller created (GIL held) and marks it started
  // (`_meshckpt_started`): from then on the operation will resolve it.
  explicit future_slot(py::object fut);
  py::object future() const { return fut_->obj; }
  // Resolves with `make_value()` (GIL taken) or the exception of `e`.
  void set(std::function<py::object()> make_value) const;
  void fail(const error& e) const;

 private:
  struct holder {
    py::object obj;
    std::atomic<bool> done{false};  // resolved (or being resolved)
    ~holder();
  };
  std::shared_ptr<holder> fut_;
};

// Waits (GIL released) until every future created so far is resolved and every deferred
// deletion done.
void drain();

// Deletes an object whose destructor may wait for the library (a checkpoint waits for its
// writes): now, with the GIL released, on a Python thread; on the reaper thread when the last
// reference went away inside a completion that runs on a library thread (waiting there for
// the library would wait for itself).
void delete_outside_library(std::function<void()> del);

// Destroys with `delete_outside_library`.
template <class T>
struct library_safe_delete {
  void operator()(T* p) const {
    delete_outside_library([p] { delete p; });
  }
};

// A stop request callable from Python for an operation in flight.
struct stop_handle {
  std::shared_ptr<std::stop_source> src = std::make_shared<std::stop_source>();
  void request() const { src->request_stop(); }
};

// One backend for the extension's direct calls (the benchmark's baseline, meshckpt.torch's
// skeleton reads), as `meshckpt bench` and a checkpoint keep theirs (a fresh io_uring ring per
// call would cost its setup each time). Never destroyed: a static backend would close its ring
// after the interpreter's threads are gone.
io::backend& process_backend();

void bind_tensors(py::module_& m);
void bind_torch_state(py::module_& m);
void bind_store_coordinator(py::module_& m);
void bind_checkpoint(py::module_& m);

}  // namespace meshckpt::python
