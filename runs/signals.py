from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

from runs.services import VISITOR_SESSION_KEY, conversations_adopt


@receiver(user_logged_in)
def adopt_anonymous_conversations(sender, request, user, **kwargs) -> None:
    if request is not None and hasattr(request, "session"):
        conversations_adopt(
            user_id=user.pk, visitor_key=request.session.get(VISITOR_SESSION_KEY, "")
        )
