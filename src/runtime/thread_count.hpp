#pragma once
// Private: the threads of this process, as the fixed-thread promise counts them (the bench
// reports it; tests/api/test_runtime.cpp checks it). io_uring's kernel workers are left out:
// the kernel starts and retires them by itself. They carry PF_IO_WORKER in their flags (field 9
// of /proc/self/task/N/stat), and one just created may still have the name of the thread that
// submitted the operation. A task gone between the listing and the read is left out too.

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace meshckpt::runtime {

inline bool is_io_worker(const std::filesystem::path& task) {
  std::ifstream f(task / "stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 > stat.size()) return false;
  unsigned long flags = 0;
  char state = 0;
  long skip = 0;
  // state ppid pgrp session tty_nr tpgid flags
  if (std::sscanf(stat.c_str() + close + 2, "%c %ld %ld %ld %ld %ld %lu", &state, &skip, &skip, &skip, &skip, &skip, &flags) != 7)
    return false;
  constexpr unsigned long pf_io_worker = 0x10;
  return (flags & pf_io_worker) != 0;
}

// The count, and their names separated by spaces in `names` when given.
inline int thread_count(std::string* names = nullptr) {
  int n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/task", ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    std::ifstream comm(it->path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name.empty() || name.rfind("iou-", 0) == 0 || is_io_worker(it->path())) continue;
    if (names) *names += name + " ";
    ++n;
  }
  return n;
}

}  // namespace meshckpt::runtime
