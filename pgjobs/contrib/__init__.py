"""Integrations with web frameworks, each imported only when used: ``pgjobs.contrib.django``
(an app, a ``manage.py pgjobs`` command and a ``django.tasks`` backend). SQLAlchemy needs
no package of its own: its sessions are accepted wherever a connection is
(``pgjobs.db.sessions``)."""
