"""Staff consoles: login and roles, the call-takers' confirmation queue, case pages, search, AI metrics."""
