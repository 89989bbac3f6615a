# smtpgate: `make run` starts a working server on the embedded defaults;
# `make test` sets up everything the tests need and runs them.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
VAR     ?= ./var
# Debian packages the integration tests drive as real peers.
DEB_PACKAGES := swaks systemd gsasl msmtp curl openssl socat postfix libsasl2-modules dovecot-core fail2ban mutt neomutt postgresql slapd ldap-utils samba-ad-dc sasl2-bin db5.3-util dovecot-ldap nginx libnginx-mod-mail dovecot-lmtpd redis-server haproxy chromium prometheus git-email libauthen-sasl-perl libio-socket-ssl-perl s-nail nodejs npm php-cli libphp-phpmailer ruby libjakarta-mail-java openjdk-17-jdk-headless

.PHONY: run test venv test-venv debs node-clients exim lint typecheck bench bench-quick bench-logins bench-frontdoor bench-scale clean docs fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
test-venv: $(VENV)/.installed-test

# The addresses come from the config (`smtpgate config show --listeners`), not from here.
run: venv
	@if [ ! -d "$(VAR)" ]; then $(BIN)/smtpgate init --dir $(VAR); fi
	@echo
	@echo "smtpgate listens on (name, address, TLS; from $(VAR)/smtpgate.toml):"
	@$(BIN)/smtpgate config show --listeners --config $(VAR)/smtpgate.toml | sed 's/^/  /'
	@starttls=$$($(BIN)/smtpgate config show --listeners --config $(VAR)/smtpgate.toml \
	    | awk '$$3 == "starttls" { print $$2; exit }'); \
	if [ -n "$$starttls" ]; then \
	  echo "send a test message (in another terminal; PASSWORD is the demo password printed by init):"; \
	  echo "  echo 'PASSWORD' | $(BIN)/smtpgate test --server $$starttls --starttls --ca $(VAR)/tls/cert.pem --user demo@localhost --password-stdin --from demo@localhost --to demo@localhost"; \
	fi
	@echo
	$(BIN)/smtpgate serve --config $(VAR)/smtpgate.toml

debs:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "error: the integration tests need these Debian packages:$$missing"; \
	    echo "       run: sudo apt-get install -y$$missing   (then make test again)"; \
	    exit 1; \
	  fi; \
	fi

# The npm mail libraries the integration tests drive (tests/clients/node), exactly
# as package-lock.json pins them; again only when the lock file changes. Node.js
# and npm come from debs: a machine whose Node.js bundles its own npm (NodeSource's
# nodejs conflicts with Debian's npm) has the npm command, which counts there.
NODE_CLIENTS := tests/clients/node
node-clients: $(NODE_CLIENTS)/node_modules/.package-lock.json
$(NODE_CLIENTS)/node_modules/.package-lock.json: $(NODE_CLIENTS)/package-lock.json | debs
	cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund --loglevel=error

# Exim 4.96 for the Dovecot-protocol front door tests: as a Debian package it
# conflicts with Postfix, so it is unpacked into build/exim/root (never installed)
# with any library it needs that is not installed; the binary wants the
# Debian-exim system user (tests/peers/exim.py runs it with its own config).
# The heavy build: Debian's exim4-daemon-light has no dovecot authenticator.
EXIM_DIR  := build/exim
EXIM_DEBS := exim4-daemon-heavy exim4-base
EXIM_LIBS := libgnutls-dane0 libgnutls30 libidn12 libidn2-0 libnsl2 libdb5.3 libpcre2-8-0 \
	libcrypt1 libldap-2.5-0 libmariadb3 libpam0g libperl5.36 libpq5 libsasl2-2 libspf2-2 \
	libsqlite3-0
exim: $(EXIM_DIR)/root/usr/sbin/exim4
	@id Debian-exim >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    useradd --system --user-group --no-create-home --home-dir /nonexistent \
	      --shell /usr/sbin/nologin Debian-exim; \
	  else echo "error: the Exim tests need the Debian-exim user (run make test as root)"; exit 1; fi; }

$(EXIM_DIR)/root/usr/sbin/exim4:
	@rm -rf $(EXIM_DIR) && mkdir -p $(EXIM_DIR)/debs
	@libs=""; for p in $(EXIM_LIBS); do dpkg -s $$p >/dev/null 2>&1 || libs="$$libs $$p"; done; \
	cd $(EXIM_DIR)/debs && { apt-get download -qq $(EXIM_DEBS) $$libs 2>/dev/null \
	  || { apt-get update -qq && apt-get download -qq $(EXIM_DEBS) $$libs; }; }
	@for d in $(EXIM_DIR)/debs/*.deb; do dpkg-deb -x $$d $(EXIM_DIR)/root; done
	@test -x $@ && echo "exim unpacked into $(EXIM_DIR)/root"

typecheck: test-venv
	$(BIN)/mypy

lint: test-venv
	$(BIN)/ruff check src tests

test: test-venv debs node-clients exim
	$(BIN)/mypy
	$(BIN)/ruff check src tests bench
	# Two workers (this machine's cores); a file's tests stay in one worker, so a
	# module-scoped server starts once (the Samba DC takes a per-worker address).
	# Files with a test marked slow are handed out first (tests/conftest.py; xdist's
	# own reorder by number of tests would put them last, one alone at the end).
	# The 30 slowest steps are listed at the end: CI must stay well under 30 minutes.
	# Bytecode is written even where PYTHONDONTWRITEBYTECODE is set (these machines set
	# it): each smtpgate command and server the tests start would otherwise compile
	# smtpgate's modules anew, about 0.1 s of CPU every time, and there are thousands.
	SMTPGATE_CI=1 PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=30

# Every fuzz target of fuzz/ for FUZZ_SECONDS each (docs/security.md, "Fuzzing"); the
# corpus grows in build/fuzz/<target>, logs and any crash land in build/fuzz/logs/.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= $(patsubst fuzz/fuzz_%.py,%,$(wildcard fuzz/fuzz_*.py))
fuzz: test-venv
	@mkdir -p build/fuzz/logs
	@for t in $(FUZZ_TARGETS); do \
	  log=build/fuzz/logs/$$t-$$(date +%s).log; mkdir -p build/fuzz/$$t; \
	  echo "fuzz $$t for $(FUZZ_SECONDS) s (log: $$log)"; \
	  dict=; [ -f fuzz/dict/$$t.dict ] && dict=-dict=fuzz/dict/$$t.dict; \
	  $(BIN)/python fuzz/fuzz_$$t.py -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=20 $$dict \
	    -print_final_stats=1 -artifact_prefix=build/fuzz/logs/$$t- build/fuzz/$$t fuzz/corpus/$$t \
	    >$$log 2>&1 || { grep -v Instrumenting $$log | tail -40; exit 1; }; \
	  grep -E '^(Done|stat::number_of_executed_units)' $$log; \
	done
	$(BIN)/python fuzz/report.py

bench: test-venv debs
	$(BIN)/python bench/run.py --repeat 3

bench-quick: test-venv debs
	$(BIN)/python bench/run.py --quick

bench-logins: test-venv debs
	$(BIN)/python bench/login_bench.py

bench-frontdoor: test-venv debs
	$(BIN)/python bench/frontdoor_bench.py

bench-scale: test-venv debs
	$(BIN)/python bench/scale_bench.py

docs: venv
	$(BIN)/python -m smtpgate.smtp.states > docs/state-machine.md
	$(BIN)/smtpgate config docs > docs/configuration.md

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache
