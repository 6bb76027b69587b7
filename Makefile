# One command to set up and run the demo, one to set up and run the tests.
#   make demo   -> installs what is missing, then `sitetwin demo` on local services
#   make test   -> installs what is missing, then the whole test suite on real services
# Both are safe to re-run; `make setup` alone only installs.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
APT_PACKAGES := mosquitto influxdb victoria-metrics postgresql chromium chromium-driver fonts-wqy-zenhei
# Where each package's main binary is, to decide whether apt is needed at all.
# chromium and chromium-driver run the browser tests (tests/web/test_browser.py);
# fonts-wqy-zenhei lets their zh-CN screenshots show Chinese instead of empty boxes.
NEED_BINARIES := /usr/sbin/mosquitto /usr/bin/influxd /usr/bin/victoria-metrics /usr/bin/chromium /usr/bin/chromedriver
STAMP := $(VENV)/.installed

.PHONY: setup system-packages venv demo test bench clean

setup: system-packages venv

system-packages:
	@missing=0; for b in $(NEED_BINARIES); do [ -x $$b ] || missing=1; done; \
	[ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || missing=1; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo ">>> installing Debian packages: $(APT_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	else echo ">>> Debian packages present: $(APT_PACKAGES)"; fi
	@# The packages' own daemons are not used: sitetwin starts private instances.

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">>> creating $(VENV) and installing sitetwin"
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: apt-get install python3-venv"; exit 1; }
	@$(VENV)/bin/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@$(VENV)/bin/pip install -q -e '.[test,bench]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(VENV)/bin/python -c "import sitetwin, paho.mqtt, influxdb_client, sqlalchemy, pytest" 
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/sitetwin demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile

bench: setup
	$(VENV)/bin/python bench/ingest.py

clean:
	-$(VENV)/bin/sitetwin services down
	rm -rf $(VENV) .sitetwin
