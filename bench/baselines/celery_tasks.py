"""Baseline (d): a Celery task with acks_late on the Redis broker (the message is acknowledged after the task
returns, so a worker killed mid-task leaves it to be delivered again once the visibility timeout passes).

What it does not guarantee: no result backend (task_ignore_result), no status, no retries set up; the Redis
transport's unacked restore relies on the visibility timeout (1 hour by default), so a crashed task waits that long.
"""
import json
import os
import time

import redis
from celery import Celery
from celery.signals import worker_ready

import common

QUEUE, DONE, READY = "baseline-celery", "baseline-celery-done", "baseline-celery-ready"

app = Celery("baselines", broker=os.environ["BASELINE_REDIS"])
app.conf.update(task_acks_late=True, task_ignore_result=True, task_default_queue=QUEUE,
                task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)
_redis = None


@app.task(name="baselines.pbkdf2")
def pbkdf2(body: str) -> None:
    global _redis
    event = json.loads(body)
    common.do_work(event)
    # The measurement's completion record: one RPUSH per task, in place of the result write a team might add.
    _redis = _redis or redis.Redis.from_url(os.environ["BASELINE_REDIS"])
    _redis.rpush(DONE, f"{common.index_of(event['id'])},{event['enqueuedAt']},{time.time()}")


@worker_ready.connect
def _ready(**_):
    redis.Redis.from_url(os.environ["BASELINE_REDIS"]).set(READY, repr(time.time()))
