// Checkpoint, LoadStatus, CheckpointManager and the MPI coordinator. Every operation starts on
// the library's engine and resolves a concurrent.futures.Future; the Python layer waits on the
// future (so Ctrl-C can request the operation's stop). Calls that can wait release the GIL.
#include <mpi.h>

#include "bindings.hpp"
#include "meshckpt/api/checkpoint.hpp"
#include "meshckpt/api/checkpoint_manager.hpp"
#include "meshckpt/coord/mpi.hpp"

namespace meshckpt::python {

namespace {

struct py_checkpoint {
  std::unique_ptr<checkpoint> c;
  std::shared_ptr<coord::coordinator> coordinator;
};
using checkpoint_holder = std::unique_ptr<py_checkpoint, library_safe_delete<py_checkpoint>>;

struct py_manager {
  std::unique_ptr<checkpoint_manager> m;
};
using manager_holder = std::unique_ptr<py_manager, library_safe_delete<py_manager>>;

// Raises AssertionError with the message of a failed load-status assertion (as TensorFlow does).
load_status check_assertion(result<load_status> r) {
  if (!r) {
    PyErr_SetString(PyExc_AssertionError, r.error().what().c_str());
    throw py::error_already_set();
  }
  return *r;
}

template <class T>
io::completion<T> resolve(future_slot slot, std::function<py::object(T&)> convert) {
  return [slot, convert = std::move(convert)](result<T> r) {
    if (!r) return slot.fail(r.error());
    auto v = std::make_shared<T>(std::move(r).value());
    slot.set([v, &convert] { return convert(*v); });
  };
}

io::completion<void> resolve_void(future_slot slot) {
  return [slot](result<void> r) {
    if (!r) return slot.fail(r.error());
    slot.set([] { return py::none(); });
  };
}

// The completion of a lazy save's snapshot that resolves `snap_fut`; none when it is None.
io::completion<void> snapshot_completion(py::object snap_fut) {
  return snap_fut.is_none() ? io::completion<void>{} : resolve_void(future_slot(std::move(snap_fut)));
}

py::object optional_str(std::optional<std::string>& s) { return s ? py::object(py::str(*s)) : py::object(py::none()); }

// Starts a save that resolves `fut` (and, lazy, `snap_fut` when the snapshot is taken) and
// stops when `stop` is requested.
void start_save(checkpoint& c, const std::string& prefix, bool numbered, py::object fut, py::object snap_fut, const stop_handle& stop) {
  auto on_done = resolve<std::string>(future_slot(std::move(fut)), [](std::string& s) { return py::str(s); });
  auto on_snap = snapshot_completion(std::move(snap_fut));
  {
    py::gil_scoped_release nogil;  // the snapshot copy runs here unless lazy
    c.start_save(prefix, numbered, std::move(on_done), std::move(on_snap), stop.src->get_token());
  }
}

void start_restore(checkpoint& c, std::optional<std::string> path, bool is_restore, py::object fut) {
  future_slot done(std::move(fut));
  auto on_done = resolve<load_status>(done, [](load_status& s) { return py::cast(s); });
  py::gil_scoped_release nogil;
  c.start_restore(std::move(path), is_restore, std::move(on_done));
}

checkpoint_holder make_checkpoint(mesh me, graph::trackable* root, std::vector<std::pair<std::string, graph::trackable*>> children,
                                  bool snapshot, std::uint64_t budget, std::shared_ptr<coord::coordinator> coordinator,
                                  std::map<std::string, std::string> restore_names, bool verify, std::int64_t chunk_bytes) {
  checkpoint_options opt;
  opt.snapshot = snapshot;
  opt.snapshot_budget_bytes = budget;
  opt.write.coordinator = coordinator.get();
  opt.read.verify_checksums = verify;
  if (chunk_bytes > 0) opt.write.chunk_bytes = static_cast<std::uint64_t>(chunk_bytes);
  opt.restore_names = std::move(restore_names);
  auto c = unwrap(checkpoint::create(std::move(me), root, std::move(children), std::move(opt)));
  return checkpoint_holder(new py_checkpoint{std::move(c), std::move(coordinator)});
}

// A Python callable called from a library call made with the GIL released.
template <class R>
std::function<R()> with_gil(py::object f) {
  if (f.is_none()) return {};
  auto shared = std::shared_ptr<py::object>(new py::object(std::move(f)), [](py::object* o) {
    if (python_section py; py.ok())
      delete o;
    else {
      o->release();  // exiting: never touch the interpreter
      delete o;
    }
  });
  return [shared]() -> R {
    py::gil_scoped_acquire gil;
    if constexpr (std::is_void_v<R>)
      (*shared)();
    else
      return (*shared)().template cast<R>();
  };
}

// Coordinator, and mpi_coordinator (torch.distributed's is in store_coordinator.cpp).
void bind_coordinator(py::module_& m) {
  auto ms = [](double s) { return coord::milliseconds(static_cast<std::int64_t>(s * 1000)); };
  auto as_bytes = [](const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); };
  auto to_py = [](const coord::bytes& b) { return py::bytes(reinterpret_cast<const char*>(b.data()), b.size()); };
  py::class_<coord::coordinator, std::shared_ptr<coord::coordinator>>(m, "Coordinator")
      .def_property_readonly("rank", &coord::coordinator::rank)
      .def_property_readonly("size", &coord::coordinator::size)
      .def(
          "gather",
          [=](coord::coordinator& c, const std::string& mine, double timeout_s) {
            result<std::vector<coord::bytes>> r = [&] {
              py::gil_scoped_release nogil;
              return c.gather(as_bytes(mine), ms(timeout_s));
            }();
            py::list out;
            for (const auto& b : unwrap(std::move(r))) out.append(to_py(b));
            return out;
          },
          py::arg("mine"), py::arg("timeout_s"),
          "Every rank's bytes, in rank order, on rank 0 (an empty list elsewhere); TimedOutError naming the missing ranks.")
      .def(
          "broadcast",
          [=](coord::coordinator& c, const std::string& data, double timeout_s) {
            result<coord::bytes> r = [&] {
              py::gil_scoped_release nogil;
              return c.broadcast(as_bytes(data), ms(timeout_s));
            }();
            return to_py(unwrap(std::move(r)));
          },
          py::arg("data"), py::arg("timeout_s"), "Rank 0's bytes, on every rank.")
      .def(
          "barrier",
          [=](coord::coordinator& c, double timeout_s) {
            result<void> r = [&] {
              py::gil_scoped_release nogil;
              return c.barrier(ms(timeout_s));
            }();
            unwrap(std::move(r));
          },
          py::arg("timeout_s"), "Returns once every rank entered it.");
  m.def(
      "mpi_coordinator",
      []() -> std::shared_ptr<coord::coordinator> {
        int init = 0;
        MPI_Initialized(&init);
        if (!init)
          throw error_exception{
              make_error(errc::unsupported, "MPI is not initialized: import mpi4py's MPI (from mpi4py import MPI) first")};
        return unwrap(coord::make_mpi_coordinator(MPI_COMM_WORLD));
      },
      "A coordinator over MPI_COMM_WORLD (collective: every rank calls it). MPI must be initialized, as by mpi4py.");
}

void bind_load_status(py::module_& m) {
  py::class_<load_status>(m, "LoadStatus")
      .def("assert_consumed", [](const load_status& s) { return check_assertion(s.assert_consumed()); })
      .def("assert_existing_objects_matched", [](const load_status& s) { return check_assertion(s.assert_existing_objects_matched()); })
      .def("assert_nontrivial_match", [](const load_status& s) { return check_assertion(s.assert_nontrivial_match()); })
      .def("expect_partial", &load_status::expect_partial)
      .def_property_readonly("unused_keys", &load_status::unused_keys)
      .def_property_readonly("unrestored_objects", &load_status::unrestored_objects)
      .def_property_readonly("deferred_errors",
                             [](const load_status& s) {
                               std::vector<std::string> r;
                               for (auto& e : s.deferred_errors()) r.push_back(e.what());
                               return r;
                             })
      .def_property_readonly("path", &load_status::path);
}

void bind_checkpoint_class(py::module_& m) {
  py::class_<py_checkpoint, checkpoint_holder>(m, "Checkpoint")
      .def(py::init(&make_checkpoint), py::arg("mesh"), py::arg("root"), py::arg("children"), py::arg("snapshot") = true,
           py::arg("snapshot_budget_bytes") = 0, py::arg("coordinator") = nullptr,
           py::arg("restore_names") = std::map<std::string, std::string>{}, py::arg("verify_checksums") = true, py::arg("chunk_bytes") = 0)
      .def(
          "start_save",
          [](py_checkpoint& p, const std::string& prefix, bool numbered, py::object fut, py::object snap, const stop_handle& stop) {
            start_save(*p.c, prefix, numbered, std::move(fut), std::move(snap), stop);
          },
          py::arg("prefix"), py::arg("numbered"), py::arg("future"), py::arg("snapshot_future"), py::arg("stop"),
          "Starts a save that resolves `future` with the path (and `snapshot_future`, unless None, when the tensors may change).")
      .def(
          "start_restore",
          [](py_checkpoint& p, std::optional<std::string> path, bool is_restore, py::object fut) {
            start_restore(*p.c, std::move(path), is_restore, std::move(fut));
          },
          py::arg("path"), py::arg("is_restore"), py::arg("future"))
      .def_property(
          "save_counter", [](py_checkpoint& p) { return p.c->save_counter(); },
          [](py_checkpoint& p, std::int64_t v) { p.c->set_save_counter(v); })
      .def(
          "sync", [](py_checkpoint& p) { unwrap(p.c->sync()); }, py::call_guard<py::gil_scoped_release>())
      .def(
          "set_snapshot", [](py_checkpoint& p, bool on) { p.c->set_snapshot(on); }, py::arg("on"),
          "Snapshot mode (copy before returning) for the saves started from now on.")
      .def_property_readonly("writes_shared_files", [](py_checkpoint& p) { return p.c->writes_shared_files(); });
}

void bind_manager(py::module_& m) {
  py::class_<py_manager, manager_holder>(m, "CheckpointManager")
      .def(py::init([](py_checkpoint& c, std::string dir, std::optional<int> max_to_keep, std::optional<double> every_n_hours,
                       std::string name, py::object step_counter, std::optional<std::int64_t> interval, py::object init_fn,
                       double lock_timeout_s) {
             manager_options o;
             o.max_to_keep = max_to_keep;
             o.keep_checkpoint_every_n_hours = every_n_hours;
             o.checkpoint_name = std::move(name);
             o.step_counter = with_gil<std::int64_t>(std::move(step_counter));
             o.checkpoint_interval = interval;
             o.init_fn = with_gil<void>(std::move(init_fn));
             o.lock_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(lock_timeout_s * 1000));
             py::gil_scoped_release nogil;  // may wait for the directory's lock
             auto mgr = unwrap(checkpoint_manager::create(*c.c, std::move(dir), std::move(o)));
             return manager_holder(new py_manager{std::move(mgr)});
           }),
           py::arg("checkpoint"), py::arg("directory"), py::arg("max_to_keep"), py::arg("keep_checkpoint_every_n_hours"),
           py::arg("checkpoint_name"), py::arg("step_counter"), py::arg("checkpoint_interval"), py::arg("init_fn"), py::arg("lock_timeout"),
           py::keep_alive<1, 2>())
      .def(
          "start_save",
          [](py_manager& p, std::optional<std::int64_t> number, bool check_interval, py::object fut, py::object snap_fut,
             const stop_handle& stop) {
            auto on_done = resolve<std::optional<std::string>>(future_slot(std::move(fut)), optional_str);
            auto on_snap = snapshot_completion(std::move(snap_fut));
            {
              py::gil_scoped_release nogil;
              p.m->start_save(number, check_interval, std::move(on_done), std::move(on_snap), stop.src->get_token());
            }
          },
          py::arg("checkpoint_number"), py::arg("check_interval"), py::arg("future"), py::arg("snapshot_future"), py::arg("stop"))
      .def_property_readonly("latest_checkpoint", [](py_manager& p) { return p.m->latest_checkpoint(); })
      .def_property_readonly("checkpoints", [](py_manager& p) { return p.m->checkpoints(); })
      .def_property_readonly("directory", [](py_manager& p) { return p.m->directory(); })
      .def(
          "restore_or_initialize", [](py_manager& p) { return unwrap(p.m->restore_or_initialize()); },
          py::call_guard<py::gil_scoped_release>());
}

}  // namespace

void bind_checkpoint(py::module_& m) {
  bind_coordinator(m);
  bind_load_status(m);
  bind_checkpoint_class(m);
  bind_manager(m);
}

}  // namespace meshckpt::python
