# Two entry points: `make demo` and `make test`. Both install what is missing first.
# `make bench` builds the benchmarks too (bench/), which the other two leave out.
BUILD ?= build
JOBS ?= $(shell nproc)
BENCH ?= OFF
CMAKE_FLAGS ?= -DMHLA_WERROR=ON -DMHLA_BUILD_BENCH=$(BENCH)

.PHONY: deps build demo test bench clean

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	@bash scripts/demo.sh $(BUILD)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

bench:
	@$(MAKE) --no-print-directory build BENCH=ON

clean:
	rm -rf $(BUILD)
