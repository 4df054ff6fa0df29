# meshckpt: the two front-door commands, `make demo` and `make test`.
# Each installs missing Debian packages (as root; otherwise it prints the command), configures
# and builds into build/ (incrementally), then runs the demo or the tests.

BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
DIR        ?=
JOBS       ?= $(shell nproc)

# What the build and its tests need (Debian 12 package names; clang-format-14 for test_clang_format;
# Ceph's daemons and awscli for the object-store suite, tests/s3).
DEBS      := cmake ninja-build g++ pkg-config liburing-dev libboost1.81-dev libxxhash-dev libsnappy-dev zlib1g-dev libprotobuf-dev protobuf-compiler catch2 python3 \
             libopenmpi-dev openmpi-bin \
             python3-dev pybind11-dev python3-numpy python3-pytest python3-torch python3-h5py python3-mpi4py \
             clang-format-14 \
             libssl-dev ceph-mon ceph-osd radosgw ceph-common awscli openssl
# The sanitizer and libFuzzer build.
SAN_DEBS  := clang-14 libclang-rt-14-dev

.PHONY: all deps build demo test test-sanitize test-tsan stress coverage bench bench-python gpu-check gpu-check-bundle docs install clean

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

# The device check on a machine with a CUDA GPU (docs/DEVICES.md): save from GPU shards and
# restore onto GPU shards of another layout, bit-exact; D2H and H2D against cudaMemcpy; disk
# throughput; the lazy save's stall. One line per figure; under 8 minutes.
gpu-check: build
	cmake --build $(BUILD) -j $(JOBS) --target gpu_check test_cuda
	$(BUILD)/bin/test_cuda
	timeout 480 $(BUILD)/bin/gpu_check --dir $(or $(DIR),/var/tmp/meshckpt-gpu-check)

# The same check for a GPU machine without this project's build dependencies: gpu_check and
# test_cuda stripped, with the shared libraries they need beside them, in .gpu-check/ (ignored
# by git; about 10 MiB). There: LD_LIBRARY_PATH=.gpu-check .gpu-check/test_cuda &&
# LD_LIBRARY_PATH=.gpu-check timeout 480 .gpu-check/gpu_check --dir /tmp/meshckpt-gpu-check
gpu-check-bundle: build
	cmake --build $(BUILD) -j $(JOBS) --target gpu_check test_cuda
	rm -rf .gpu-check && mkdir -p .gpu-check
	strip -o .gpu-check/gpu_check $(BUILD)/bin/gpu_check
	strip -o .gpu-check/test_cuda $(BUILD)/bin/test_cuda
	ldd $(BUILD)/bin/gpu_check $(BUILD)/bin/test_cuda | awk '/=> \// {print $$3}' | sort -u | \
	  grep -Ev '/(libc|libm|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' | xargs -I{} cp -L {} .gpu-check/

# ASan + UBSan build with clang-14 (fuzz targets linked with libFuzzer); runs the tests
# labelled "sanitize": the unit suites, the commit fault suite, and a short fuzzing run.
test-sanitize: deps
	@bash cmake/install-deps.sh $(SAN_DEBS)
	@test -f $(ASAN_BUILD)/build.ninja || CC=clang-14 CXX=clang++-14 cmake -S . -B $(ASAN_BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=Debug -DMESHCKPT_SANITIZE=address,undefined -DMESHCKPT_LIBFUZZER=ON \
	  -DMESHCKPT_BUILD_EXAMPLES=OFF
	cmake --build $(ASAN_BUILD) -j $(JOBS) --target sanitize_tests
	ctest --test-dir $(ASAN_BUILD) -L sanitize --output-on-failure -j $(JOBS)

# ThreadSanitizer build (clang-14) of the concurrency stress test: many async saves and
# restores on a multi-threaded io_context, lazy saves racing with mutation, cancellation from
# another thread, shutdown with IO in flight; on both backends. And of the device suite: copies
# completed on the simulated device's engine thread, snapshots and batched restores. And of the
# thread-group collectives: contributions waking waiters on other threads (test_coordinator,
# test_multiprocess).
test-tsan: deps
	@bash cmake/install-deps.sh $(SAN_DEBS)
	@test -f $(TSAN_BUILD)/build.ninja || CC=clang-14 CXX=clang++-14 cmake -S . -B $(TSAN_BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMESHCKPT_SANITIZE=thread -DMESHCKPT_BUILD_EXAMPLES=OFF
	cmake --build $(TSAN_BUILD) -j $(JOBS) --target test_concurrency test_device test_coordinator test_multiprocess
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ctest --test-dir $(TSAN_BUILD) -R '^(test_concurrency|test_device|test_coordinator|test_multiprocess)$$' --output-on-failure -j $(JOBS)

# The reliability suites in long mode (docs/RELIABILITY.md): 5,000 kills, 16 torn variants per
# crash point, the MPI fault scenarios, and 10 minutes of each libFuzzer target under ASan+UBSan.
# Not part of `make test` (CI runs the same suites at CI size).
STRESS_FUZZ_SECONDS ?= 600
stress: build test-sanitize
	MESHCKPT_KILLS=5000 TMPDIR=/dev/shm $(BUILD)/bin/test_kill
	MESHCKPT_TORN_SEEDS=16 TMPDIR=/dev/shm $(BUILD)/bin/test_crash
	TMPDIR=/dev/shm $(BUILD)/bin/test_faults
	$(BUILD)/bin/test_hostile
	ctest --test-dir $(BUILD) -L mpi --output-on-failure
	for t in fuzz_manifest_decode fuzz_restore_plan fuzz_open_restore fuzz_torch_file; do \
	  mkdir -p $(ASAN_BUILD)/fuzz-work/$$t && \
	  $(ASAN_BUILD)/bin/$$t -max_total_time=$(STRESS_FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    $(ASAN_BUILD)/fuzz-work/$$t fuzz/corpus/$$t || exit 1; \
	done

# Line and branch coverage of the commit, recovery and retention code under the reliability and
# API suites: clang's source-based coverage (llvm-cov), whose branches are the conditions in
# the source. The report goes to build-cov/coverage.txt.
COV_BUILD ?= build-cov
COV_FILES := src/save/commit.cpp src/save/save_messages.cpp src/api/state_file.cpp src/api/checkpoint_manager.cpp
COV_TESTS := test_crash test_faults test_kill test_alloc test_edges test_checkpoint test_commit_faults test_manager test_api_checkpoint test_multiprocess
coverage: deps
	@bash cmake/install-deps.sh $(SAN_DEBS) llvm-14
	@test -f $(COV_BUILD)/build.ninja || CC=clang-14 CXX=clang++-14 cmake -S . -B $(COV_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	  -DMESHCKPT_COVERAGE=ON -DMESHCKPT_BUILD_EXAMPLES=OFF
	cmake --build $(COV_BUILD) -j $(JOBS) --target $(COV_TESTS)
	rm -rf $(COV_BUILD)/profraw && mkdir -p $(COV_BUILD)/profraw
	cd $(COV_BUILD) && for t in $(COV_TESTS); do \
	  LLVM_PROFILE_FILE=$(CURDIR)/$(COV_BUILD)/profraw/$$t-%p.profraw TMPDIR=/dev/shm MESHCKPT_KILLS=200 bin/$$t > /dev/null || exit 1; done
	llvm-profdata-14 merge -sparse $(COV_BUILD)/profraw/*.profraw -o $(COV_BUILD)/coverage.profdata
	llvm-cov-14 report -instr-profile=$(COV_BUILD)/coverage.profdata $(COV_BUILD)/bin/test_crash \
	  $(foreach t,$(filter-out test_crash,$(COV_TESTS)),-object $(COV_BUILD)/bin/$(t)) $(COV_FILES) > $(COV_BUILD)/coverage.txt
	@cat $(COV_BUILD)/coverage.txt

# The benchmark of BENCHMARKS.md, with fio's figures from the same run (fio is installed here,
# not for the build). BENCH_DIR must be on the disk to measure; it is removed afterwards.
BENCH_DIR ?= $(shell mktemp -d -p /var/tmp meshckpt-bench-XXXXXX)
bench: build
	@bash cmake/install-deps.sh fio
	$(BUILD)/bin/meshckpt bench --dir $(BENCH_DIR) --workload all; rc=$$?; rm -rf $(BENCH_DIR); exit $$rc

# The Python benchmark (docs/PYTHON.md): meshckpt from Python against the C++ bench, torch.save,
# numpy.savez and h5py, in one run. BENCH_DIR as for `make bench`.
bench-python: build
	@bash cmake/install-deps.sh fio
	PYTHONPATH=$(BUILD)/python MESHCKPT_CLI=$(BUILD)/bin/meshckpt /usr/bin/python3 python/benchmarks/bench.py --dir $(BENCH_DIR); \
	  rc=$$?; rm -rf $(BENCH_DIR); exit $$rc

# The API reference from the public headers' /// comments (Doxygen), in $(BUILD)/docs/html.
docs:
	@bash cmake/install-deps.sh doxygen
	mkdir -p $(BUILD)/docs
	( cat docs/Doxyfile; echo "OUTPUT_DIRECTORY = $(BUILD)/docs"; echo "WARN_LOGFILE = $(BUILD)/docs/warnings.txt" ) | doxygen -
	@echo "API reference: $(BUILD)/docs/html/index.html ($$(wc -l < $(BUILD)/docs/warnings.txt) doxygen warnings in $(BUILD)/docs/warnings.txt)"

# Installs headers, library, CLI, CMake package and pkg-config file under PREFIX.
PREFIX ?= /usr/local
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD)
