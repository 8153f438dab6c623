# One image for every role of the Procfile (docker-compose.yml sets each service's command).
# No system packages: healthchecks are Python one-liners, and psycopg, numpy and pylibjpeg come as wheels.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ROUTER_VAR_DIR=/var/lib/router STORAGE_ROOT=/var/lib/router/storage
WORKDIR /app
# A fixed uid/gid, so shared storage (NFS, docs/scale-out.md) can be owned by the same ids on every host.
RUN groupadd --system --gid 999 router \
    && useradd --system --uid 999 --gid router --home /var/lib/router --create-home router
COPY pyproject.toml README.md ./
COPY routerproject ./routerproject
COPY apps ./apps
COPY templates ./templates
COPY manage.py Procfile ./
# The dependencies are pinned in pyproject.toml. collectstatic runs on the embedded default (no secret
# needed at build time). The storage folder exists in the image, owned by the router user, so a new
# named volume mounted there starts with that owner.
RUN pip install --upgrade pip && pip install . && python manage.py collectstatic --noinput --verbosity 0 \
    && mkdir -p /var/lib/router/storage && chown -R router:router /var/lib/router
USER router
EXPOSE 8000 11112 5555
CMD ["gunicorn", "routerproject.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2"]
