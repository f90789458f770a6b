# zeroinit.bootstrap — set-up, demo and tests. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
COLLECTIONS := $(VENV)/collections
SANITY_ROOT ?= $(or $(TMPDIR),/tmp)/zeroinit-sanity-$(shell printf %s '$(CURDIR)' | md5sum | cut -c1-8)/ansible_collections/zeroinit/bootstrap
PYTEST_ARGS ?=
# The oldest Python modules, module_utils and the node agent run on, on targets (tests/config.yml).
TARGET_PYTHON_MIN := 3.8

export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_HOST_PATTERN_MISMATCH := ignore
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv system-deps demo test unit integration adversarial molecule lint sanity bench build clean

## Set-up: a virtualenv from PyPI, this checkout linked in as the collection zeroinit.bootstrap, the node
## agent as .venv/bin/zeroinit-agent (runs module_utils/node/__main__.py) and the provisioner service as
## .venv/bin/zeroinit-provisioner (module_utils/provisioning/service/__main__.py).
venv: $(VENV)/.ready $(BIN)/zeroinit-provisioner

$(VENV)/.ready: requirements.txt tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -r tests/requirements.txt
	mkdir -p $(COLLECTIONS)/ansible_collections/zeroinit
	ln -sfn $(CURDIR) $(COLLECTIONS)/ansible_collections/zeroinit/bootstrap
	echo "$(COLLECTIONS)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zeroinit_bootstrap.pth"
	printf '#!%s\nimport runpy\nrunpy.run_module("ansible_collections.zeroinit.bootstrap.plugins.module_utils.node", run_name="__main__")\n' \
		"$(BIN)/python" > $(BIN)/zeroinit-agent
	chmod 0755 $(BIN)/zeroinit-agent
	touch $@

# Its own target, so a virtualenv made before the service existed gets it too.
$(BIN)/zeroinit-provisioner: $(VENV)/.ready
	printf '#!%s\nimport runpy\nrunpy.run_module("ansible_collections.zeroinit.bootstrap.plugins.module_utils.provisioning.service", run_name="__main__")\n' \
		"$(BIN)/python" > $@
	chmod 0755 $@

## System packages of bindep.txt's default and test profiles for this platform (sshd, ip, ...), installed with
## apt-get when missing. bindep prints the missing ones and exits 1 when there are any.
system-deps: venv
	@missing=$$($(BIN)/bindep --brief --file bindep.txt test); status=$$?; \
	if [ $$status -gt 1 ]; then echo "bindep failed on bindep.txt (exit $$status)" >&2; exit $$status; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## The demo: an embedded nats-server on loopback, a local fleet in provisioning mode, the provisioning playbook.
demo: venv
	$(BIN)/python demo/run_demo.py

## Every test and lint. CI runs this.
test: venv system-deps unit integration adversarial molecule lint sanity

unit: venv
	$(BIN)/pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

## The slowest twenty are listed at the end: the integration tests are most of the test command's time.
integration: venv system-deps
	$(BIN)/pytest -p no:cacheprovider --durations=20 tests/integration $(PYTEST_ARGS)

## The hostile network: malformed messages, mutated CSRs, broken helpers, a broker restart and a killed fleet;
## fixed counts, a few minutes at most. The figures print with PYTEST_ARGS=-s.
adversarial: venv system-deps
	$(BIN)/pytest -p no:cacheprovider tests/adversarial $(PYTEST_ARGS)

molecule: venv system-deps
	$(BIN)/molecule test --all

lint: venv
	$(BIN)/ruff format --check --diff .
	$(BIN)/ruff check .
	$(BIN)/ansible-lint --offline --profile production
	$(BIN)/vermin --quiet --no-tips --violations --target=$(TARGET_PYTHON_MIN)- plugins/modules plugins/module_utils
	$(BIN)/antsibull-changelog lint

## ansible-test needs the collection under ansible_collections/NS/NAME and a get-pip it can run offline.
sanity: venv
	rm -rf $(SANITY_ROOT) && mkdir -p $(SANITY_ROOT)
	git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -C $(SANITY_ROOT) -xf -
	mkdir -p $(HOME)/.ansible/test/cache
	$(BIN)/python tests/sanity/offline_get_pip.py $(HOME)/.ansible/test/cache
	cd $(SANITY_ROOT) && $(BIN)/ansible-test sanity --venv --python 3.11 --color no

## Benchmarks print figures; they are not part of `make test`.
bench: venv
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

## The Galaxy tarball, zeroinit-bootstrap-<version>.tar.gz here (galaxy.yml's build_ignore says what stays out).
build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path $(CURDIR)

clean:
	rm -rf $(VENV) .ansible tests/output zeroinit-bootstrap-*.tar.gz
