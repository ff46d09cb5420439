"""surg_web: the review web app (FastAPI) and its static front end.

Talks to the catalog and the blob store through ``resources``; never imports torch.
"""

from surg_web.app import create_app

__all__ = ["create_app"]
