"""Tests with real parts: a PulseAudio server for capture, Chromium for the dashboard, crashes."""
