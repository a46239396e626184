"""A site: its configuration and lifecycle (``serve``), and starting one as a process (``launcher``)."""
