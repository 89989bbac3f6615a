# smtpgate: `make run` starts a working server on the embedded defaults;
# `make test` sets up everything the tests need and runs them.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
VAR     ?= ./var
# Debian packages the integration tests drive as real peers.
DEB_PACKAGES := swaks gsasl msmtp curl openssl socat postfix dovecot-core fail2ban mutt neomutt postgresql slapd ldap-utils samba-ad-dc sasl2-bin db5.3-util dovecot-ldap

.PHONY: run test venv test-venv debs lint typecheck bench bench-logins clean docs

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
	for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
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

typecheck: test-venv
	$(BIN)/mypy

lint: test-venv
	$(BIN)/ruff check src tests

test: test-venv debs
	$(BIN)/mypy
	$(BIN)/ruff check src tests bench
	SMTPGATE_CI=1 $(BIN)/pytest -q

bench: test-venv debs
	$(BIN)/python bench/run.py

bench-logins: test-venv debs
	$(BIN)/python bench/login_bench.py

docs: venv
	$(BIN)/python -m smtpgate.smtp.states > docs/state-machine.md
	$(BIN)/smtpgate config docs > docs/configuration.md

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache
