"""Baseline (b): pika, one durable queue, persistent messages published without publisher confirms, N worker
processes consuming with manual acks (ack after the work) and a prefetch of --prefetch.

What it does not guarantee: without confirms the producer never learns whether the broker took a message (a broker
crash or a closed channel loses what was in flight, silently); no status, no retry, no dead-lettering. A classic
queue by default (what the issue's baseline used); --queue-type quorum for the queue type EventPipeline's lane uses.
"""
import argparse
import json
import time
import uuid

import pika

import common

QUEUE = "baseline-events"


def worker(no, ctl, rec, url, prefetch):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    ctl.mark_ready()
    ctl.go.wait()

    def on_message(ch, method, _properties, body):
        event = json.loads(body)
        common.do_work(event)
        ch.basic_ack(delivery_tag=method.delivery_tag)  # after the work: a crash before this redelivers it
        rec.completed(event)

    channel.basic_consume(QUEUE, on_message, auto_ack=False)
    while not ctl.stop.is_set():
        connection.process_data_events(time_limit=0.1)
    connection.close()


def produce(channel, run_tag, n, event_type, iterations, batch):
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    for start in range(0, n, batch):
        enqueued_at = time.time()
        for i in range(start, min(start + batch, n)):
            channel.basic_publish("", QUEUE, common.make_event(run_tag, i, event_type, iterations, enqueued_at),
                                  properties)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--amqp", required=True)
    p.add_argument("--workload", choices=["cpu", "noop"], default="noop")
    p.add_argument("--mode", choices=["prefill", "burst"], default="prefill")
    p.add_argument("--queue-type", choices=["classic", "quorum"], default="classic")
    p.add_argument("-n", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--prefetch", type=int, default=100)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--out")
    a = p.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(a.amqp))
    channel = connection.channel()
    channel.queue_delete(QUEUE)
    channel.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": a.queue_type})
    event_type = "hash.pbkdf2" if a.workload == "cpu" else "noop.io"
    workers = common.WorkerSet(worker, a.workers, (a.amqp, a.prefetch))
    run_tag = uuid.uuid4().hex[:8]
    workers.start()
    cpu = common.CpuMeter(["rabbitmq"], workers.pids)
    if a.mode == "prefill":
        produce(channel, run_tag, a.n, event_type, a.iterations, a.batch)
        # Wait until the broker holds them all (no confirms: a passive declare is the only way to know).
        while channel.queue_declare(QUEUE, passive=True).method.message_count < a.n:
            time.sleep(0.05)
        started = workers.go()
    else:
        workers.go()
        started = time.time()
        produce(channel, run_tag, a.n, event_type, a.iterations, a.batch)
    # Keep the producer's connection serviced (heartbeats) while the workers drain.
    deadline = time.time() + 600
    while workers.ctl.done.value < a.n:
        workers._check_alive()
        if time.time() > deadline:
            raise TimeoutError(f"only {workers.ctl.done.value} of {a.n} events completed")
        connection.process_data_events(time_limit=0.002)
    cpu_us = cpu.per_event_us(a.n)
    records = workers.stop()
    channel.queue_delete(QUEUE)
    connection.close()
    name = f"pika, {a.queue_type} queue, persistent, no confirms, {'PBKDF2' if a.workload == 'cpu' else 'noop'}"
    common.emit(common.figures(name, a.mode, a.n, records, started, {
        "workload": a.workload, "workers": a.workers, "queue_type": a.queue_type, "prefetch": a.prefetch, "cpu_us_per_event": cpu_us}), a.out)


if __name__ == "__main__":
    main()
