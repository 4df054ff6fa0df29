#pragma once
// Private: the one blocking bridge (the sync_wait of cppcoro and libunifex). The blocking API
// faces — and only they — run their asynchronous operation through `run_blocking`: a private
// io_context run to completion on the calling thread.
//
// It refuses to run on a thread that is running one of the library's executors (a checkpoint's
// IO thread, the CPU pool, another blocking call's context): the operation it would wait for
// may need that very thread, so waiting there deadlocks. Debug and sanitizer builds abort with
// the reason (a bug to fix where it is called); release builds return errc::unsupported.

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "executor_thread.hpp"
#include "meshckpt/io/async.hpp"
#include "task.hpp"

namespace meshckpt::runtime {

// What a blocking call on a library thread gets (after the abort of debug and sanitizer builds).
inline error refuse_blocking(std::string_view what) {
  std::string msg = "blocking call " + std::string(what) +
                    " made on a thread that runs meshckpt's executors (a completion handler or a library thread): it would "
                    "wait for work that needs this very thread; call the asynchronous form instead";
#if !defined(NDEBUG) || defined(MESHCKPT_SANITIZED_BUILD)
  if (!std::getenv("MESHCKPT_BLOCKING_REFUSAL_RETURNS")) {  // set by the test that checks the release behaviour
    std::fprintf(stderr, "meshckpt: %s\n", msg.c_str());
    std::abort();
  }
#endif
  return make_error(errc::unsupported, std::move(msg));
}

// The blocking form of an asynchronous operation: `start(executor, completion)` starts it on the
// private io_context, which the calling thread runs until every operation in flight completed.
// The completion may be called on any thread; it is delivered on the private context.
template <class T, class Start>
result<T> run_blocking(std::string_view what, Start start) {
  if (on_library_thread()) return refuse_blocking(what);
  std::optional<asio::io_context> ctx;
  try {
    ctx.emplace();
  } catch (const std::bad_alloc&) {
    return out_of_memory("starting a blocking call");  // nothing started
  }
  std::optional<result<T>> out;
  bool oom = false;
  const auto* outer = blocking_context;
  blocking_context = &*ctx;
  try {
    io::async_op<T>(
        ctx->get_executor(), [&](io::completion<T> c) { start(ctx->get_executor(), std::move(c)); },
        [&out](result<T> r) { out.emplace(std::move(r)); });
  } catch (const std::bad_alloc&) {
    // TRICKY: io::async_op rethrows only when the completion is still held by what was started
    // (a queued save whose caller then failed to allocate): it will be called, so the context
    // must run until it is — returning now would leave it a dangling context to post to.
    oom = true;
  } catch (...) {
    blocking_context = outer;
    throw;
  }
  blocking_context = outer;
  library_thread_scope inside;
  // A handler that throws (std::bad_alloc) leaves ctx.run(); the context must still run until
  // every operation in flight has completed — they hold buffers and post back to it — before
  // it may be destroyed. The operation then reports running out of memory.
  while (true) {
    try {
      ctx->run();
      break;
    } catch (const std::bad_alloc&) {
      oom = true;
      ctx->restart();
    }
  }
  if (!out || (oom && *out)) return out_of_memory("running a blocking operation");
  return std::move(*out);
}

}  // namespace meshckpt::runtime
