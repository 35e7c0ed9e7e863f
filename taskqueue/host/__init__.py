"""What the host gives: the config file and its checks, TLS files, secrets kept out of memory
dumps, file trust, logging. May import protocol and the ground.
"""
