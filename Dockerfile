FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 ROUTER_VAR_DIR=/var/lib/router STORAGE_ROOT=/var/lib/router/storage
WORKDIR /app
RUN useradd --system --home /var/lib/router --create-home router
COPY pyproject.toml README.md ./
COPY routerproject ./routerproject
COPY apps ./apps
COPY templates ./templates
COPY manage.py Procfile ./
RUN pip install --upgrade pip && pip install . && python manage.py collectstatic --noinput --verbosity 0 \
    && chown -R router /var/lib/router
USER router
EXPOSE 8000 11112
CMD ["gunicorn", "routerproject.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2"]
