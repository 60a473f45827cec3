"""Pure text computation: cleaning, tokenising, classification, duplicate scoring. No I/O at import."""
