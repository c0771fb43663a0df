"""The tests, one folder per part of the repository; shared helpers in ``tests.helpers``."""
