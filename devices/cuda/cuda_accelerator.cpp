// The CUDA accelerator (meshckpt/device/cuda.hpp).
#include <cuda_runtime_api.h>

#include <mutex>
#include <string>
#include <vector>

#include "meshckpt/device/cuda.hpp"

namespace meshckpt::device {

namespace {

error cuda_error(cudaError_t e, std::string_view what) {
  return error{std::make_error_code(std::errc::io_error),
               "CUDA " + std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")"};
}

class cuda final : public accelerator {
 public:
  static result<std::shared_ptr<cuda>> create() {
    int n = 0;
    if (auto e = cudaGetDeviceCount(&n); e != cudaSuccess || n < 1)
      return make_error(errc::unsupported, "no CUDA device: " + std::string(e != cudaSuccess ? cudaGetErrorString(e) : "none visible"));
    auto c = std::shared_ptr<cuda>(new cuda);
    for (int d = 0; d < n; ++d) {
      if (auto e = cudaSetDevice(d); e != cudaSuccess) return cuda_error(e, "cudaSetDevice " + std::to_string(d));
      streams s;
      if (auto e = cudaStreamCreateWithFlags(&s.to_host, cudaStreamNonBlocking); e != cudaSuccess)
        return cuda_error(e, "creating a stream");
      if (auto e = cudaStreamCreateWithFlags(&s.to_device, cudaStreamNonBlocking); e != cudaSuccess)
        return cuda_error(e, "creating a stream");
      c->streams_.push_back(s);
    }
    return c;
  }
  ~cuda() override {
    for (auto& s : streams_) {
      cudaStreamDestroy(s.to_host);
      cudaStreamDestroy(s.to_device);
    }
  }

  std::string_view name() const override { return "cuda"; }
  int device_count() const override { return static_cast<int>(streams_.size()); }
  void copy_to_host(int gpu, std::byte* dst, const std::byte* src, std::size_t bytes, copy_done done) noexcept override {
    start(gpu, dst, src, bytes, cudaMemcpyDeviceToHost, std::move(done));
  }
  void copy_to_device(int gpu, std::byte* dst, const std::byte* src, std::size_t bytes, copy_done done) noexcept override {
    start(gpu, dst, src, bytes, cudaMemcpyHostToDevice, std::move(done));
  }
  result<std::shared_ptr<void>> pin(std::span<std::byte> host) override {
    if (host.empty()) return std::shared_ptr<void>();
    auto e = cudaHostRegister(host.data(), host.size(), cudaHostRegisterPortable);
    if (e == cudaErrorHostMemoryAlreadyRegistered) {
      (void)cudaGetLastError();  // not sticky; clear it
      return std::shared_ptr<void>();
    }
    if (e != cudaSuccess) return cuda_error(e, "cudaHostRegister of " + std::to_string(host.size()) + " bytes");
    return std::shared_ptr<void>(host.data(), [](void* p) { cudaHostUnregister(p); });
  }
  result<std::byte*> allocate(int gpu, std::size_t bytes) override {
    BOOST_OUTCOME_TRY(check(gpu));
    if (auto e = cudaSetDevice(gpu); e != cudaSuccess) return cuda_error(e, "cudaSetDevice");
    void* p = nullptr;
    if (auto e = cudaMalloc(&p, std::max<std::size_t>(bytes, 1)); e != cudaSuccess)
      return cuda_error(e, "cudaMalloc of " + std::to_string(bytes) + " bytes on GPU " + std::to_string(gpu));
    return static_cast<std::byte*>(p);
  }
  void free(int gpu, std::byte* p) noexcept override {
    if (check(gpu) && cudaSetDevice(gpu) == cudaSuccess) cudaFree(p);
  }

 private:
  struct streams {
    cudaStream_t to_host = nullptr;
    cudaStream_t to_device = nullptr;
  };
  cuda() = default;

  result<void> check(int gpu) const {
    if (gpu < 0 || gpu >= device_count())
      return make_error(errc::invalid_argument,
                        "no CUDA device " + std::to_string(gpu) + " (" + std::to_string(device_count()) + " visible)");
    return success();
  }

  static void CUDART_CB finished(cudaStream_t, cudaError_t status, void* p) {
    std::unique_ptr<copy_done> done(static_cast<copy_done*>(p));
    (*done)(status == cudaSuccess ? result<void>(success()) : result<void>(cuda_error(status, "asynchronous copy")));
  }

  void start(int gpu, std::byte* dst, const std::byte* src, std::size_t bytes, cudaMemcpyKind kind, copy_done done) noexcept {
    if (auto ok = check(gpu); !ok) return done(ok.error());
    std::unique_ptr<copy_done> held;
    try {
      held = std::make_unique<copy_done>(std::move(done));
    } catch (const std::bad_alloc&) {
      return done(out_of_memory("starting a CUDA copy"));
    }
    const auto& s = streams_[static_cast<std::size_t>(gpu)];
    cudaStream_t stream = kind == cudaMemcpyDeviceToHost ? s.to_host : s.to_device;
    cudaError_t e = cudaSetDevice(gpu);
    if (e == cudaSuccess && bytes) e = cudaMemcpyAsync(dst, src, bytes, kind, stream);
    // The callback runs once the copy (and everything before it on the stream) has completed.
    if (e == cudaSuccess) e = cudaStreamAddCallback(stream, &finished, held.get(), 0);
    if (e != cudaSuccess) return (*held)(cuda_error(e, kind == cudaMemcpyDeviceToHost ? "copy to the host" : "copy to the device"));
    (void)held.release();  // the callback owns it
  }

  std::vector<streams> streams_;
};

}  // namespace

result<std::shared_ptr<accelerator>> make_cuda() {
  // Never destroyed: its streams must not be destroyed after the CUDA runtime at exit.
  static std::mutex mu;
  static auto* made = new std::shared_ptr<cuda>();
  std::lock_guard lk(mu);
  if (!*made) {
    BOOST_OUTCOME_TRY(auto c, cuda::create());
    *made = std::move(c);
  }
  return std::shared_ptr<accelerator>(*made);
}

}  // namespace meshckpt::device
