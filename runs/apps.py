from django.apps import AppConfig


class RunsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "runs"
    verbose_name = "Chat"

    def ready(self) -> None:
        from runs import signals  # noqa: F401  (connects the sign-in adoption)
