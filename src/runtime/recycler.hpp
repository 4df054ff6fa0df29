#pragma once
// Private: memory kept between the saves and restores of a process, the way protobuf reuses a
// cleared message. A save or restore of a model with many small tensors builds a manifest of
// tens of thousands of small vectors; once freed, the allocator hands those pages back to the
// kernel, and the next checkpoint faults every page in again. On virtual machines a page fault
// costs microseconds (about 15 us on the machines the benchmarks run on), so for 20,000 tensors
// that was a fifth of a save. A recycler keeps the last few objects of a kind, with the
// capacity of every vector inside them, for the next checkpoint to fill in place.
//
// Bounded: at most `slots` objects, and only those that `keep` accepts (small enough). Never
// waits: a recycler busy on another thread (or left locked by a fork) is simply not used.

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

namespace meshckpt::runtime {

template <class T, std::size_t slots = 2>
class recycler {
 public:
  using keep_fn = bool (*)(const T&);
  explicit recycler(keep_fn keep) : keep_(keep) {}

  // An object kept earlier (contents unspecified: callers overwrite it), or a new one.
  T take() {
    std::unique_lock l(m_, std::try_to_lock);
    if (l)
      for (auto& s : slots_)
        if (s) {
          T v = std::move(*s);
          s.reset();
          return v;
        }
    return T{};
  }

  // Keeps `v` for a later take() if a slot is free and it is small enough; frees it otherwise.
  void give(T&& v) noexcept {
    if (!keep_(v)) return;
    std::unique_lock l(m_, std::try_to_lock);
    if (!l) return;
    for (auto& s : slots_)
      if (!s) {
        s.emplace(std::move(v));
        return;
      }
  }

 private:
  keep_fn keep_;
  std::mutex m_;
  std::array<std::optional<T>, slots> slots_;
};

}  // namespace meshckpt::runtime

namespace meshckpt::runtime {

struct keep_contents {
  template <class T>
  void operator()(T&) const noexcept {}
};

// Gives `v` back to `r` when the scope ends (after `clear`, so nothing it pointed to is kept).
template <class T, class Clear = keep_contents>
class give_back_at_exit {
 public:
  give_back_at_exit(recycler<T>& r, T& v, Clear clear = {}) : r_(r), v_(v), clear_(std::move(clear)) {}
  give_back_at_exit(const give_back_at_exit&) = delete;
  ~give_back_at_exit() {
    clear_(v_);
    r_.give(std::move(v_));
  }

 private:
  recycler<T>& r_;
  T& v_;
  Clear clear_;
};

}  // namespace meshckpt::runtime
