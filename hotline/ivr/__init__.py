"""The voice door: Vosk speech-to-text, PBX adapters and the phone menu (IVR)."""
