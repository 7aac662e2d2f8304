# kubevirt-qat-hook developer targets. `make demo` and `make test` create .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
IMAGE ?= ghcr.io/kubevirt-qat-hook/kubevirt-qat-hook
TAG ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' hook_sidecar/__init__.py)
DEMO_DEVICE ?= 0000:3d:02.2

.PHONY: help demo test lint typecheck unit peers fixtures proto proto-check fuzz mutation bench image image-push image-test clean

help:
	@echo "make demo        transform the bundled example domain and show the diff"
	@echo "make test        unit, property, libvirt and gRPC tests, then ruff and mypy"
	@echo "make peers       build KubeVirt's and Kubernetes' programs the tests run (Go; cached)"
	@echo "make fixtures    regenerate tests/data/kubevirt-domains with KubeVirt's converter"
	@echo "make proto       regenerate the committed gRPC modules from proto/"
	@echo "make bench       run the benchmarks"
	@echo "make fuzz        long fuzzing campaign (100k inputs)"
	@echo "make mutation    mutation testing of the pure core (mutmut): score and survivors"
	@echo "make image       build the container image ($(IMAGE):$(TAG))"
	@echo "make image-push  push it"
	@echo "make image-test  build the image from a local Debian base and drive it over gRPC"

$(VENV)/.demo: setup.cfg pyproject.toml
	PYTHON=$(PYTHON) scripts/system-deps.sh demo
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q .
	touch $@

$(VENV)/.test: setup.cfg pyproject.toml
	PYTHON=$(PYTHON) scripts/system-deps.sh test
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(PY) -m pip install -q --no-deps .
	$(VENV)/bin/qat-hook transform examples/domain.xml --vmi examples/vmi.json \
		--device $(DEMO_DEVICE) --verify-sysfs off --diff

# The real kubectl (kustomize) and helm that render deploy/ and charts/ in the tests.
$(VENV)/.k8s-tools: $(VENV)/.test scripts/k8s-tools.sh
	PYTHON=$(PY) scripts/k8s-tools.sh $(VENV)/k8s-tools
	touch $@

# KubeVirt's and Kubernetes' own programs, built from Go modules (tests/peers/*/peers.txt) into
# a cache keyed by each module's sources: minutes the first time, seconds afterwards.
peers:
	scripts/peers.sh build

# The domains KubeVirt's converter writes for tests/data/kubevirt-domains/*.json, at the
# KubeVirt version pinned in tests/peers/kubevirt/go.mod.
fixtures:
	scripts/kubevirt-fixtures.sh

unit: $(VENV)/.test $(VENV)/.k8s-tools peers
	scripts/libvirtd.sh  # libvirt's QEMU driver (qemu:///system) for tests/test_libvirt.py
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check hook_sidecar tests benchmarks scripts
	$(VENV)/bin/ruff format --check hook_sidecar tests benchmarks scripts

typecheck: $(VENV)/.test
	$(VENV)/bin/mypy

test: unit lint typecheck

proto: $(VENV)/.test
	$(PY) scripts/gen_proto.py

fuzz: $(VENV)/.test
	$(PY) tests/fuzz/fuzz_hook.py -runs=100000

# Mutation testing of the pure core (config: [mutmut] in setup.cfg); not part of `make test`.
# Prints the score per module and every mutant not killed, with its status (`mutmut show
# NAME` for its diff); the reasons for the survivors kept are in tests/mutation-survivors.md.
mutation: $(VENV)/.test
	$(VENV)/bin/mutmut run --max-children 2 > $(VENV)/mutmut-run.log 2>&1 || \
		{ tail -c 2000 $(VENV)/mutmut-run.log; exit 1; }
	@$(VENV)/bin/mutmut results --all true > $(VENV)/mutmut-results.txt
	@awk -F': ' '{ split($$1, name, "."); module = name[2]; total[module]++; all++; \
		   if ($$2 == "killed" || $$2 == "timeout") { killed[module]++; dead++ } } \
		 END { for (m in total) printf "%-12s %4d of %4d mutants killed (%.1f%%)\n", \
		         m, killed[m], total[m], 100 * killed[m] / total[m] | "sort"; close("sort"); \
		       printf "%-12s %4d of %4d mutants killed (%.1f%%)\n", "all", dead, all, \
		         100 * dead / all }' $(VENV)/mutmut-results.txt
	@awk -F': ' '$$2 != "killed" && $$2 != "timeout" { sub(/^ +/, "", $$1); \
		   split($$1, name, "."); print "not killed in " name[2] ": " $$1 " (" $$2 ")" }' $(VENV)/mutmut-results.txt | sort

bench: $(VENV)/.test
	$(PY) benchmarks/bench_transform.py
	$(PY) benchmarks/bench_numa.py
	$(PY) benchmarks/bench_sidecar.py

image:
	scripts/image.sh build $(IMAGE) $(TAG)

image-push:
	scripts/image.sh push $(IMAGE) $(TAG)

image-test: $(VENV)/.test
	scripts/image-test.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache mutants
