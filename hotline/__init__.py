"""一号通: the front end of a 12345-style citizen hotline."""

__version__ = "0.1.0"
