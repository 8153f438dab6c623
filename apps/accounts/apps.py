from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        from . import receivers

        user_locked_out.connect(receivers.login_locked_out, dispatch_uid="accounts.login_locked_out")
