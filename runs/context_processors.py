from django.conf import settings
from django.http import HttpRequest


def accounts(request: HttpRequest) -> dict[str, bool]:
    """Whether the pages offer a visitor to create an account, and to reset a password."""
    return {
        "signup_open": settings.CHAT_SIGNUP_OPEN,
        "password_reset": settings.CHAT_PASSWORD_RESET,
    }
