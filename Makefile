# p4flowtable — see README.md
SHELL := /bin/bash
PY_SYS   ?= /usr/bin/python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
SHELL_VENV := .venv-shell
P4SRC    := $(shell find p4src -name '*.p4' -not -path 'p4src/build/*' | sort)
P4BUILD  := p4src/build
P4C      ?= p4c-bm2-ss
APT_PKGS := nftables conntrack mininet iproute2 iperf3 tcpdump ethtool netcat-openbsd python3-venv \
            python3-pip python3-dev gcc

.PHONY: install install-service demo test test-unit topo p4 check-p4 tofino-into bench fuzz clean testgen check-testgen print-testgen-args

install: $(STAMP) install-service

# The daemon as a systemd service (root): the unit, and an example
# configuration where none is (docs: README, "Operating p4ft").
install-service: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then \
	  install -d /etc/p4ft /etc/systemd/system; \
	  [ -e /etc/p4ft/p4ft.conf ] || install -m 644 etc/p4ft.conf /etc/p4ft/p4ft.conf; \
	  home=yes; case "$(CURDIR) $$(readlink -f $(VENV)/bin/python)" in */home/*|/root/*|*" /root/"*|*/run/user/*) home=read-only;; esac; \
	  sed -e "s|@P4FT@|$(CURDIR)/$(VENV)/bin/p4ft|" -e "s|@DOCS@|$(CURDIR)|" -e "s|@PROTECT_HOME@|$$home|" etc/p4ft.service \
	    > /etc/systemd/system/p4ft.service; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	else echo "not root: p4ft.service not installed"; fi

# System packages (root), then a venv that sees the system Python's Mininet.
# setup.py compiles the native code: the reconcile reader's and conntrack
# messages' decoders, the flow tuple and the flow entries' packing (optional:
# without a C compiler their Python stands in).
$(STAMP): pyproject.toml setup.py $(wildcard controller/p4flowtable/*.c controller/p4flowtable/*.h)
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing system packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root: skipping system packages ($(APT_PKGS))"; fi
	$(PY_SYS) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@# p4runtime-shell, a stock P4Runtime client for the conformance test: a venv
	@# of its own, since it pins an old protobuf
	@[ -x $(SHELL_VENV)/bin/python ] || { $(PY_SYS) -m venv $(SHELL_VENV) && \
	  $(SHELL_VENV)/bin/pip install -q p4runtime-shell==0.0.6; } || \
	  echo "p4runtime-shell not installed: its conformance test will be skipped"
	touch $@

# Starts the topology (BMv2 if installed, the embedded target otherwise), runs
# a bulk TCP transfer through masquerade, shows the flow offloaded, tears down.
demo: install
	$(PY) bmv2-topo/p4ft_topo.py --demo

topo: install
	$(PY) bmv2-topo/p4ft_topo.py

test: install
	$(PY) -m pytest -ra $(PYTEST_ARGS) tests

test-unit: install
	$(PY) -m pytest -ra -m "not integration" tests

# P4 programs: name:source. flowtable is the data plane; l3fwd the benchmark's yardstick.
PROGRAMS := flowtable:p4src/flowtable.p4 l3fwd:p4src/bench/l3fwd.p4
P4C_ARGS := --std p4-16 --arch v1model

# The Tofino build (p4src/tna, docs/tofino.md): p4c's Tofino backend, then
# its assembler. The flow tables as large as fit Tofino 1's 12 stages
# (docs/tofino.md: 131,072 + 28,672 needs 14); the CPU port is the PCIe CPU
# port of a 2-pipe Tofino 1 (192; 320 on 4 pipes).
P4C_TOFINO     ?= p4c-barefoot
BFAS           ?= bfas
TOFINO_BUILD   := $(P4BUILD)/tofino
TOFINO_CPU_PORT ?= 192
TOFINO_V4_SIZE ?= 139264
TOFINO_V6_SIZE ?= 32768
TOFINO_INFO    := cpu_port=$(TOFINO_CPU_PORT) flow_table_v4_size=$(TOFINO_V4_SIZE) flow_table_v6_size=$(TOFINO_V6_SIZE)
TOFINO_ARGS    := --target tofino --arch tna --std p4-16 --p4runtime-force-std-externs -g --verbose \
                  -DP4FT_CPU_PORT=$(TOFINO_CPU_PORT) -DFLOW_TABLE_V4_SIZE=$(TOFINO_V4_SIZE) \
                  -DFLOW_TABLE_V6_SIZE=$(TOFINO_V6_SIZE)

# tofino-build DIR: compile p4src/tna into DIR/ (p4info, bf-rt.json, context.json, tofino.bin, resources.json)
define tofino-build
	$(P4C_TOFINO) $(TOFINO_ARGS) -o $(1)/out --p4runtime-files $(1)/flowtable.p4info.txtpb \
	  --bf-rt-schema $(1)/bf-rt.json p4src/tna/flowtable.p4 > $(1)/p4c.log 2>&1 \
	  || { tail -20 $(1)/p4c.log; exit 1; }
	cd $(1)/out/pipe && $(BFAS) flowtable.bfa -o . > ../../bfas.log 2>&1 || { tail -5 $(1)/bfas.log; exit 1; }
	test -s $(1)/out/pipe/tofino.bin || { echo "bfas wrote no binary:"; tail -5 $(1)/bfas.log; exit 1; }
endef

# Compile p4src/ with p4c into p4src/build/ and record the sources' hash.
# The Tofino program too where its compiler is installed.
p4:
	@command -v $(P4C) >/dev/null || { echo "$(P4C) not found: install p4c (BMv2 backend)"; exit 1; }
	@for prog in $(PROGRAMS); do name=$${prog%%:*}; src=$${prog#*:}; \
	  echo "$(P4C) $$src"; \
	  $(P4C) $(P4C_ARGS) -o $(P4BUILD)/$$name.json --p4runtime-files $(P4BUILD)/$$name.p4info.txtpb $$src \
	  || exit 1; done
	@if command -v $(P4C_TOFINO) >/dev/null && command -v $(BFAS) >/dev/null; then \
	  echo "$(P4C_TOFINO) p4src/tna/flowtable.p4 (v4 $(TOFINO_V4_SIZE), v6 $(TOFINO_V6_SIZE), CPU port $(TOFINO_CPU_PORT))"; \
	  tmp=$$(mktemp -d) && $(MAKE) -s tofino-into DIR=$$tmp && mkdir -p $(TOFINO_BUILD) && \
	  $(PY_SYS) p4src/tna/artifacts.py pack $$tmp $(TOFINO_BUILD) $(TOFINO_INFO) && rm -rf $$tmp || exit 1; \
	else echo "$(P4C_TOFINO) not installed: the Tofino artifacts are left as committed"; \
	  $(PY_SYS) p4src/tna/artifacts.py fresh $(TOFINO_BUILD) || echo "  ... and are STALE (docs/tofino.md)"; fi
	sha256sum $(P4SRC) > $(P4BUILD)/SOURCES.sha256
	@echo "artifacts in $(P4BUILD)/, sources hash recorded"

tofino-into:
	$(call tofino-build,$(DIR))

# Fails when the committed artifacts were not built from the current sources.
check-p4:
	@sha256sum --quiet -c $(P4BUILD)/SOURCES.sha256 || { echo "p4src/build is stale: run 'make p4'"; exit 1; }
	@diff <(sha256sum $(P4SRC) | awk '{print $$2}') <(awk '{print $$2}' $(P4BUILD)/SOURCES.sha256) \
	  || { echo "P4 source files were added or removed: run 'make p4'"; exit 1; }
	@if command -v $(P4C) >/dev/null; then \
	  tmp=$$(mktemp -d); \
	  for prog in $(PROGRAMS); do name=$${prog%%:*}; src=$${prog#*:}; \
	    $(P4C) $(P4C_ARGS) -o $$tmp/$$name.json --p4runtime-files $$tmp/$$name.p4info.txtpb $$src && \
	    diff -q $$tmp/$$name.p4info.txtpb $(P4BUILD)/$$name.p4info.txtpb && \
	    $(PY_SYS) -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); \
	      [x.pop("__meta__",None) for x in (a,b)]; sys.exit(a!=b)' $$tmp/$$name.json $(P4BUILD)/$$name.json \
	    || { echo "p4src/build/$$name differs from what $(P4C) produces: run 'make p4'"; rm -rf $$tmp; exit 1; }; \
	  done; rm -rf $$tmp; echo "P4 artifacts fresh (hash and recompiled with $(P4C))"; \
	else echo "P4 artifacts fresh (hash; $(P4C) not installed, not recompiled)"; fi
	@if command -v $(P4C_TOFINO) >/dev/null && command -v $(BFAS) >/dev/null; then \
	  tmp=$$(mktemp -d) && $(MAKE) -s tofino-into DIR=$$tmp && \
	  $(PY_SYS) p4src/tna/artifacts.py check $$tmp $(TOFINO_BUILD) $(TOFINO_INFO) \
	  || { echo "p4src/build/tofino differs from what $(P4C_TOFINO) produces: run 'make p4'"; rm -rf $$tmp; exit 1; }; \
	  rm -rf $$tmp; echo "Tofino artifacts fresh (recompiled with $(P4C_TOFINO))"; \
	elif $(PY_SYS) p4src/tna/artifacts.py fresh $(TOFINO_BUILD) >/dev/null; then \
	  echo "Tofino artifacts fresh (sources digest; $(P4C_TOFINO) not installed, not recompiled)"; \
	else echo "Tofino artifacts STALE: built from older p4src/tna and p4src/include; $(P4C_TOFINO) is not"\
	  "installed here to rebuild them ('make p4' where it is; docs/tofino.md)"; fi

# P4Testgen's tests of both programs (docs/tofino.md, "Executed"): STF files
# committed in tests/testgen/, like the compiled artifacts, with the hash of
# the sources and options they came from. The TNA program is generated as it
# is deployed (CPU port 192); the table sizes do not change its paths.
P4TESTGEN   ?= p4testgen
P4INCLUDE   ?= /usr/local/share/p4c/p4include
TESTGEN_DIR := tests/testgen
TESTGEN_ARGS := --std p4-16 --test-backend STF --max-tests 0 --path-selection GREEDY_STATEMENT_SEARCH \
                --seed 1 --track-coverage STATEMENTS --print-coverage -I $(P4INCLUDE)
TESTGEN_TNA  := --target tofino --arch tna -D__TARGET_TOFINO__=1 -DP4FT_CPU_PORT=$(TOFINO_CPU_PORT) \
                -DFLOW_TABLE_V4_SIZE=1024 -DFLOW_TABLE_V6_SIZE=1024
TESTGEN_V1   := --target bmv2 --arch v1model
TESTGEN_STAMP = { sha256sum $(P4SRC); echo "$(TESTGEN_ARGS) | $(TESTGEN_TNA) | $(TESTGEN_V1)" | sha256sum | \
                sed 's/-$$/options/'; }

testgen:
	@command -v $(P4TESTGEN) >/dev/null || { echo "$(P4TESTGEN) not found: build p4c with -DENABLE_TEST_TOOLS=ON"; exit 1; }
	@tmp=$$(mktemp -d) && \
	for job in "tna:$(TESTGEN_TNA):p4src/tna/flowtable.p4" "v1model:$(TESTGEN_V1):p4src/flowtable.p4"; do \
	  name=$${job%%:*}; rest=$${job#*:}; opts=$${rest%%:*}; src=$${rest#*:}; \
	  echo "$(P4TESTGEN) $$opts $$src"; \
	  $(P4TESTGEN) $$opts $(TESTGEN_ARGS) --out-dir $$tmp/$$name $$src > $$tmp/$$name.log 2>&1 \
	    || { tail -20 $$tmp/$$name.log; exit 1; }; \
	  rm -rf $(TESTGEN_DIR)/$$name && mkdir -p $(TESTGEN_DIR)/$$name && \
	  for f in $$tmp/$$name/*.stf; do grep -v '^# Date generated' $$f > $(TESTGEN_DIR)/$$name/$$(basename $$f); done; \
	  grep -o 'covered: [0-9.]* ([0-9]*/[0-9]*)' $$tmp/$$name.log | tail -1 | \
	    sed "s|^|$$name: $$(ls $$tmp/$$name/*.stf | wc -l) tests, statements |" >> $$tmp/COVERAGE; \
	  awk '/Not covered program nodes:/{b=""; on=1; next} on&&/^\t/{b=b"\n"$$0; next} on&&/^  /{b=b" "$$0; next} \
	       on{on=0; last=b} END{print "  not covered:" last}' $$tmp/$$name.log >> $$tmp/COVERAGE; \
	  cp $$tmp/$$name/*.txt $(TESTGEN_DIR)/$$name/ 2>/dev/null || true; \
	done && mv $$tmp/COVERAGE $(TESTGEN_DIR)/COVERAGE && cat $(TESTGEN_DIR)/COVERAGE && rm -rf $$tmp
	@$(TESTGEN_STAMP) > $(TESTGEN_DIR)/SOURCES.sha256

# The TNA generation's options, for a test that generates from a changed copy
print-testgen-args:
	@echo $(TESTGEN_TNA) $(TESTGEN_ARGS)

# Fails when the committed P4Testgen tests were not generated from the current sources and options.
check-testgen:
	@diff -q <($(TESTGEN_STAMP)) $(TESTGEN_DIR)/SOURCES.sha256 >/dev/null \
	  && echo "P4Testgen tests fresh (sources and options hash)" \
	  || { echo "tests/testgen is stale for p4src/ or the options: run 'make testgen'"; exit 1; }

# 100,000 random and malformed frames into each switch (root; the tests send 3,000).
fuzz: install
	P4FT_FUZZ_FRAMES=100000 $(PY) -m pytest -s -m integration tests/test_malformed.py

# Benchmarks (root): results in bench/results/, plots in docs/img/.
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/memory.py
	$(PY) bench/switch_pps.py
	$(PY) bench/offload_rate.py
	$(PY) bench/paths.py
	$(PY) bench/poll_cost.py
	$(PY) bench/aging.py
	$(PY) bench/punt_storm.py
	$(PY) bench/reroute.py
	$(PY) bench/reroute.py --switch soft --out bench/results/reroute_soft.json
	$(PY) bench/plot.py

clean:
	rm -rf $(VENV) $(SHELL_VENV) .pytest_cache controller/*.egg-info build controller/p4flowtable/*.so
	find . -name __pycache__ -prune -exec rm -rf {} +
