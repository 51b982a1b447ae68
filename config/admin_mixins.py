"""Admin pieces shared by every app's console pages (config is imported by all apps)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


class ReadOnlyAdminMixin:
    """No add, change or delete: a view-only page for every row (history, ledgers, logs)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ConsoleFormMixin:
    """A plain Django form drawn in the console's theme: each widget becomes django-unfold's
    counterpart (for the intermediate pages of actions, which are not model forms)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from django import forms
        from unfold import widgets

        swaps: list[tuple[type, type]] = [
            (forms.Textarea, widgets.UnfoldAdminTextareaWidget),
            (forms.RadioSelect, widgets.UnfoldAdminRadioSelectWidget),
            (forms.Select, widgets.UnfoldAdminSelectWidget),
            (forms.DateInput, widgets.UnfoldAdminSingleDateWidget),
            (forms.NumberInput, widgets.UnfoldAdminDecimalFieldWidget),
            (forms.TextInput, widgets.UnfoldAdminTextInputWidget),
        ]
        for field in self.fields.values():  # type: ignore[attr-defined]
            for plain, themed in swaps:
                if type(field.widget) is plain:
                    choices = getattr(field.widget, "choices", None)
                    field.widget = themed(attrs=field.widget.attrs)  # type: ignore[attr-defined]
                    if choices is not None:  # a select or radio keeps its options
                        field.widget.choices = choices
                    break
