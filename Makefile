# meshckpt: the two front-door commands, `make demo` and `make test`.
# Each installs missing Debian packages (as root; otherwise it prints the command), configures
# and builds into build/ (incrementally), then runs the demo or the tests.

BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
DIR        ?=
JOBS       ?= $(shell nproc)

# What the build needs (Debian 12 package names).
DEBS      := cmake ninja-build g++ pkg-config liburing-dev libboost1.81-dev libxxhash-dev catch2 python3 \
             libopenmpi-dev openmpi-bin
# The sanitizer and libFuzzer build.
SAN_DEBS  := clang-14 libclang-rt-14-dev

.PHONY: all deps build demo test test-sanitize test-tsan bench clean

all: build

deps:
	@bash cmake/install-deps.sh $(DEBS)

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/bin/trainer_coro $(if $(DIR),--dir $(DIR))

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# ASan + UBSan build with clang-14 (fuzz targets linked with libFuzzer); runs the tests
# labelled "sanitize": the unit suites, the commit fault suite, and a short fuzzing run.
test-sanitize: deps
	@bash cmake/install-deps.sh $(SAN_DEBS)
	@test -f $(ASAN_BUILD)/build.ninja || CC=clang-14 CXX=clang++-14 cmake -S . -B $(ASAN_BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=Debug -DMESHCKPT_SANITIZE=address,undefined -DMESHCKPT_LIBFUZZER=ON \
	  -DMESHCKPT_BUILD_EXAMPLES=OFF
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	ctest --test-dir $(ASAN_BUILD) -L sanitize --output-on-failure -j $(JOBS)

# ThreadSanitizer build (clang-14) of the concurrency stress test: many async saves and
# restores on a multi-threaded io_context, lazy saves racing with mutation, cancellation from
# another thread, shutdown with IO in flight; on both backends.
test-tsan: deps
	@bash cmake/install-deps.sh $(SAN_DEBS)
	@test -f $(TSAN_BUILD)/build.ninja || CC=clang-14 CXX=clang++-14 cmake -S . -B $(TSAN_BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMESHCKPT_SANITIZE=thread -DMESHCKPT_BUILD_EXAMPLES=OFF
	cmake --build $(TSAN_BUILD) -j $(JOBS) --target test_concurrency
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ctest --test-dir $(TSAN_BUILD) -R '^test_concurrency$$' --output-on-failure

# The benchmark of BENCHMARKS.md, with fio's figures from the same run (fio is installed here,
# not for the build). BENCH_DIR must be on the disk to measure; it is removed afterwards.
BENCH_DIR ?= $(shell mktemp -d -p /var/tmp meshckpt-bench-XXXXXX)
bench: build
	@bash cmake/install-deps.sh fio
	$(BUILD)/bin/meshckpt bench --dir $(BENCH_DIR) --workload all; rc=$$?; rm -rf $(BENCH_DIR); exit $$rc

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD)
