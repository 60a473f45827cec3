"""Typed keys of the aiohttp application's state (shared by the app factory and the channels)."""

from __future__ import annotations

import jinja2
from aiohttp import web

from hotline.answers import AnswerService
from hotline.attachments import AttachmentStore
from hotline.classifier import Classifier
from hotline.dedup import DedupService
from hotline.dispatch.service import Dispatcher
from hotline.hotspots import HotspotService
from hotline.intake import Intake
from hotline.notify import Notifications
from hotline.settings import Settings
from hotline.speech import SpeechToText
from hotline.store import Store
from hotline.surveys import SurveyService

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
CLASSIFIER = web.AppKey("classifier", Classifier)
INTAKE = web.AppKey("intake", Intake)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
NOTIFICATIONS = web.AppKey("notifications", Notifications)
# Present only when a speech model is installed; channels check with ``app.get(STT)``.
STT = web.AppKey("stt", SpeechToText)
SURVEYS = web.AppKey("surveys", SurveyService)
# Duplicate matching (merge/confirm/reject/unmerge for the console) and hotspots.
DEDUP = web.AppKey("dedup", DedupService)
HOTSPOTS = web.AppKey("hotspots", HotspotService)
# Answers for consultations (智能问答): the in-memory KB index and the answer service.
ANSWERS = web.AppKey("answers", AnswerService)
# Confirm → dispatch, re-dispatch (重办) and the backend's status events (hotline/dispatch).
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
# Photos citizens upload with the web form (files under <data_dir>/attachments).
ATTACHMENTS = web.AppKey("attachments", AttachmentStore)
