// zrollout._native: the C++ hard parts, reached from Python (python/zrollout/weights.py is the
// public face): checksum64 (comm/checksum.h), the Trainer's publish of tensors held in memory by
// ipc, disk or broadcast (actors/trainer.h), and the MPI start-up of a Python trainer rank
// (python/native/mpi_session.h), and the safetensors reader (model/safetensors.h) behind
// zrollout.safetensors. Nothing here reimplements them: it converts arguments and results.
//
// Tensors arrive as tuples (name, dtype, shape, data_ptr, nbytes, checksum or None) whose memory
// the Python caller keeps alive and unchanged during the call (weights.py holds the tensors).
// Every call that copies bytes or waits for engines releases the GIL. Errors raise _native.Error
// with args (code, message): code is the wire name of comm/status.h (e.g. "weight_mismatch"), the
// message names the tensor or field.
// Thread-safety: a Trainer is used by one thread at a time (weights.Publisher holds a lock).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "actors/trainer.h"
#include "comm/checksum.h"
#include "comm/wire_weights.h"
#include "model/safetensors.h"
#include "python/native/mpi_session.h"
#include "runtime/logging.h"

namespace py = pybind11;

namespace zr::py_native {

namespace {

// A failed Status on its way to Python (see the translator in the module definition).
struct NativeError {
  Status status;
};

PyObject* g_error_type = nullptr;  // _native.Error, owned by the module

[[noreturn]] void raise(Status st) { throw NativeError{std::move(st)}; }

template <class T>
T unwrap(Result<T> r) {
  if (!r.ok()) raise(r.status());
  return std::move(r).value();
}

// (name, dtype, shape, data_ptr, nbytes, checksum|None) tuples -> references to the caller's bytes.
std::vector<TensorRef> tensors_from(const py::list& items) {
  std::vector<TensorRef> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    auto t = items[i].cast<py::tuple>();
    if (t.size() != 6)
      raise(
          make_error(ErrorCode::invalid_argument,
                     "tensors[" + std::to_string(i) + "]: expected (name, dtype, shape, data_ptr, nbytes, checksum)"));
    TensorRef r;
    r.name = t[0].cast<std::string>();
    r.dtype = t[1].cast<std::string>();
    r.shape = t[2].cast<std::vector<int64_t>>();
    r.data = reinterpret_cast<const void*>(t[3].cast<uintptr_t>());
    r.nbytes = t[4].cast<uint64_t>();
    if (!t[5].is_none()) r.checksum = t[5].cast<uint64_t>();
    out.push_back(std::move(r));
  }
  return out;
}

py::dict result_dict(const PublishResult& r, const std::string& path, const std::vector<std::string>& endpoints) {
  py::dict d;
  d["version"] = r.version;
  d["path"] = path;
  d["bytes"] = r.bytes;
  d["seconds"] = r.seconds;
  d["write_seconds"] = r.write_seconds;
  d["liveness_seconds"] = r.liveness_seconds;
  d["acked"] = r.acked;
  d["dead"] = r.dead;
  py::list acks;
  for (size_t i = 0; i < r.acks.size(); ++i) {
    const UpdateWeightsReply& a = r.acks[i];
    py::dict e;
    e["engine"] = r.acked[i];
    e["endpoint"] = endpoints.at(static_cast<size_t>(r.acked[i]));
    e["version"] = a.version;
    e["bytes"] = a.bytes;
    e["stage_seconds"] = a.stage_seconds;
    e["commit_seconds"] = a.commit_seconds;
    e["zero_copy_tensors"] = a.zero_copy_tensors;
    acks.append(e);
  }
  d["acks"] = acks;
  py::dict sums;
  for (const TensorMeta& m : r.tensors) sums[py::str(m.name)] = m.checksum;
  d["checksums"] = sums;
  d["shm_segment"] = r.shm_segment;
  d["shm_reused"] = r.shm_reused;
  return d;
}

py::dict engine_dict(const EngineState& e) {
  py::dict d;
  d["index"] = e.index;
  d["endpoint"] = e.endpoint;
  d["alive"] = e.alive;
  d["updating"] = e.updating;
  d["status"] = e.status;
  d["in_flight"] = e.in_flight;
  d["weight_version"] = e.weight_version;
  d["rerouted"] = e.rerouted;
  d["finished"] = e.finished;
  return d;
}

// The one ZeroMQ context of this Python process (runtime/context.h), made on first use. Never
// destroyed: its destructor waits for every socket, and Python may still hold a Trainer at exit.
Context& process_context() {
  static Context* ctx = new Context();
  return *ctx;
}

// The Trainer as Python sees it: connect once, publish many times (the ipc segment pool and the
// broadcast buffer live as long as this object).
class PyTrainer {
 public:
  PyTrainer(std::vector<std::string> endpoints, double heartbeat_s, int heartbeat_liveness) : endpoints_(endpoints) {
    TrainerOptions opt;
    if (heartbeat_s > 0) opt.router.heartbeat_interval = Millis(static_cast<int64_t>(heartbeat_s * 1000));
    if (heartbeat_liveness > 0) opt.router.heartbeat_liveness = heartbeat_liveness;
    opt.curve_for = [](const std::string& ep) { return python::engine_keys_for(ep); };  // under mpirun: the job's keys
    trainer_ = unwrap(Trainer::connect(process_context(), endpoints, std::move(opt)));
  }

  py::dict publish(const py::list& tensors, int64_t version, const std::string& path, const std::string& in_flight,
                   bool flush_cache, const std::vector<std::string>& only, const std::string& disk_dir,
                   uint64_t bucket_bytes, double timeout_s, bool reuse_segments) {
    Trainer& t = get();
    std::vector<TensorRef> refs = tensors_from(tensors);
    PublishOptions opt;
    auto wp = wire::weight_path_from_name(path);
    if (!wp) raise(make_error(ErrorCode::invalid_argument, "path: '" + path + "' (ipc, disk or broadcast)"));
    opt.path = *wp;
    auto policy = wire::in_flight_from_name(in_flight);
    if (!policy)
      raise(make_error(ErrorCode::invalid_argument,
                       "in_flight: '" + in_flight + "' (drain, abort, continue or recompute)"));
    opt.in_flight = *policy;
    opt.flush_cache = flush_cache;
    opt.only = only;
    opt.disk_dir = disk_dir;
    opt.bucket_bytes = bucket_bytes;
    opt.reuse_segments = reuse_segments;
    opt.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    Result<PublishResult> res = make_error(ErrorCode::internal, "publish: not run");
    {
      py::gil_scoped_release unlocked;
      if (*wp == WeightPath::broadcast) {
        auto s = python::session();
        res = s.ok() ? t.publish_broadcast(refs, version, opt, *s->weight_group) : Result<PublishResult>(s.status());
      } else {
        res = t.publish(refs, version, opt);
      }
    }
    return result_dict(unwrap(std::move(res)), path, endpoints_);
  }

  int64_t weight_version(int engine) {
    Trainer& t = get();
    py::gil_scoped_release unlocked;
    return unwrap(t.weight_version(engine));
  }

  py::list engines() {
    py::list out;
    for (const EngineState& e : get().engines()) out.append(engine_dict(e));
    return out;
  }

  void shutdown_engines() {
    Trainer& t = get();
    Status st;
    {
      py::gil_scoped_release unlocked;
      st = t.shutdown_engines();
    }
    if (!st.ok()) raise(st);
  }

  size_t held_segments() { return get().held_segments(); }
  const std::vector<std::string>& endpoints() const { return endpoints_; }

  // Unmaps the pooled segments and closes the sockets now (not at garbage collection).
  void close() {
    py::gil_scoped_release unlocked;
    trainer_.reset();
  }

 private:
  Trainer& get() {
    if (!trainer_) raise(make_error(ErrorCode::unavailable, "publisher: closed"));
    return *trainer_;
  }

  std::vector<std::string> endpoints_;
  std::unique_ptr<Trainer> trainer_;
};

uint64_t checksum_of(const void* data, size_t n) {
  py::gil_scoped_release unlocked;
  return checksum64_parallel(data, n, std::max(1u, std::thread::hardware_concurrency()));
}

// checksum64 of any C-contiguous buffer (bytes, bytearray, memoryview, numpy array).
uint64_t checksum_buffer(const py::buffer& b) {
  py::buffer_info info = b.request();
  py::ssize_t expect = info.itemsize;
  for (int i = info.ndim - 1; i >= 0; --i) {
    if (info.shape[i] > 1 && info.strides[i] != expect)
      raise(make_error(ErrorCode::invalid_argument, "checksum64: the buffer is not C-contiguous"));
    expect *= info.shape[i];
  }
  return checksum_of(info.ptr, static_cast<size_t>(info.size * info.itemsize));
}

py::dict mpi_session_dict() {
  python::MpiSession s;
  {
    py::gil_scoped_release unlocked;
    s = unwrap(python::session());
  }
  py::dict d;
  d["world_rank"] = s.world_rank;
  d["world_size"] = s.world_size;
  d["engine_endpoints"] = s.engine_endpoints;
  d["engine_ranks"] = s.engine_ranks;
  return d;
}

void set_log_level(const std::string& level) {
  auto lv = spdlog::level::from_str(level);
  if (lv == spdlog::level::off && level != "off")
    raise(make_error(ErrorCode::invalid_argument, "log_level: '" + level + "' (trace, debug, info, warn, error, off)"));
  spdlog::set_level(lv);
}

}  // namespace

// One tensor's bytes inside a mapped safetensors file, exposed as a read-only byte buffer; holds
// the mapping (TensorView::owner) for as long as Python holds the buffer or a numpy view of it.
struct MappedBytes {
  std::shared_ptr<const void> owner;
  const void* data = nullptr;
  size_t nbytes = 0;
};

// [(name, dtype, shape, MappedBytes)] of a safetensors file, or of a folder (model.safetensors or
// the shards of model.safetensors.index.json), sorted by name.
py::list read_safetensors(const std::string& path) {
  auto opened =
      std::filesystem::is_directory(path) ? SafetensorsArchive::open_dir(path) : SafetensorsArchive::open_file(path);
  SafetensorsArchive ar = unwrap(std::move(opened));
  py::list out;
  for (const auto& [name, v] : ar.tensors())
    out.append(py::make_tuple(name, dtype_name(v.dtype), v.shape, MappedBytes{v.owner, v.data, v.nbytes}));
  return out;
}

}  // namespace zr::py_native

PYBIND11_MODULE(_native, m) {
  using namespace zr::py_native;
  namespace zp = zr::py_native;
  m.doc() = "zrollout's C++ core for Python: checksum64, weight publishing from tensors in memory, MPI start-up";

  static py::exception<NativeError> error(m, "Error", PyExc_RuntimeError);
  g_error_type = error.ptr();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const NativeError& e) {
      py::tuple args = py::make_tuple(zr::error_code_name(e.status.code), e.status.message);
      PyErr_SetObject(g_error_type, args.ptr());
    }
  });

  // The library logs to stderr like the zrollout processes (names the MPI rank when there is one);
  // quiet by default: warnings and errors only.
  spdlog::set_default_logger(zr::make_actor_logger("trainer", std::nullopt));
  spdlog::set_level(spdlog::level::warn);
  m.def("set_log_level", &zp::set_log_level, py::arg("level"));

  m.def("checksum64", &zp::checksum_buffer, py::arg("buffer"),
        "checksum64 (comm/checksum.h) of a C-contiguous buffer: bytes, memoryview, numpy array");
  m.def(
      "checksum64_ptr",
      [](uintptr_t ptr, uint64_t nbytes) {
        if (!ptr && nbytes) raise(zr::make_error(zr::ErrorCode::invalid_argument, "checksum64_ptr: null pointer"));
        return checksum_of(reinterpret_cast<const void*>(ptr), nbytes);
      },
      py::arg("data_ptr"), py::arg("nbytes"),
      "checksum64 of nbytes at an address the caller keeps alive (a torch tensor's data_ptr())");

  py::class_<PyTrainer>(m, "Trainer")
      .def(py::init<std::vector<std::string>, double, int>(), py::arg("endpoints"), py::arg("heartbeat_s") = 0.0,
           py::arg("heartbeat_liveness") = 0)
      .def("publish", &PyTrainer::publish, py::arg("tensors"), py::arg("version"), py::arg("path") = "ipc",
           py::arg("in_flight") = "drain", py::arg("flush_cache") = false, py::arg("only") = std::vector<std::string>{},
           py::arg("disk_dir") = "", py::arg("bucket_bytes") = uint64_t{64} << 20, py::arg("timeout_s") = 600.0,
           py::arg("reuse_segments") = true)
      .def("weight_version", &PyTrainer::weight_version, py::arg("engine") = 0)
      .def("engines", &PyTrainer::engines)
      .def("shutdown_engines", &PyTrainer::shutdown_engines)
      .def("held_segments", &PyTrainer::held_segments)
      .def_property_readonly("endpoints", &PyTrainer::endpoints)
      .def("close", &PyTrainer::close);

  py::class_<MappedBytes>(m, "MappedBytes", py::buffer_protocol())
      .def_buffer([](MappedBytes& b) {
        return py::buffer_info(const_cast<void*>(b.data), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.nbytes)}, {py::ssize_t{1}}, /*readonly=*/true);
      })
      .def("__len__", [](const MappedBytes& b) { return b.nbytes; });
  m.def("read_safetensors", &zp::read_safetensors, py::arg("path"),
        "[(name, dtype, shape, bytes buffer)] of a safetensors file or model folder (model/safetensors.h), "
        "memory-mapped, sorted by name");

  m.def("under_mpirun", &zr::python::under_mpirun);
  m.def("mpi_session", &zp::mpi_session_dict,
        "Joins the start-up exchange of `mpirun -np 1 python3 ... : -np K zrollout serve ...` as the trainer "
        "rank (once per process) and returns {world_rank, world_size, engine_endpoints, engine_ranks}");
  m.def(
      "mpi_write_job_keys",
      [](const std::string& dir) {
        py::gil_scoped_release unlocked;
        if (zr::Status st = zr::python::write_job_keys(dir); !st.ok()) zp::raise(st);
      },
      py::arg("dir"), "Writes the job's server.key, client.key and client.key_secret into dir (after mpi_session)");
  m.def("mpi_finalize", [] {
    py::gil_scoped_release unlocked;
    zr::python::finalize();
  });

  m.attr("zrollout_binary") = ZR_ZROLLOUT_BIN;  // the zrollout executable of the build that made this module
}
