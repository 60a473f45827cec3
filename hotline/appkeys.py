"""Typed keys of the aiohttp application's state (shared by the app factory and the channels)."""

from __future__ import annotations

import jinja2
from aiohttp import web

from hotline.classifier import Classifier
from hotline.intake import Intake
from hotline.notify import Notifications
from hotline.settings import Settings
from hotline.speech import SpeechToText
from hotline.store import Store

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
CLASSIFIER = web.AppKey("classifier", Classifier)
INTAKE = web.AppKey("intake", Intake)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
NOTIFICATIONS = web.AppKey("notifications", Notifications)
# Present only when a speech model is installed; channels check with ``app.get(STT)``.
STT = web.AppKey("stt", SpeechToText)
