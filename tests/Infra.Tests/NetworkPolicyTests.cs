using System.Text.Json.Nodes;
using EventPipeline.Infra.Tests.Support;

namespace EventPipeline.Infra.Tests;

/// <summary>
/// Evaluates the rendered NetworkPolicies for every pair of parties (the namespace's pods, pods elsewhere in the
/// cluster, addresses outside it) on every port in play, and compares the result with the flows the app needs: each
/// needed flow is open and nothing else is. The needed flows come from the code (which connection strings each
/// service reads) and the design (DNS, Prometheus, clients of the API, the operators and KEDA in prod).
/// </summary>
public class NetworkPolicyTests
{
    private const string Ns = "eventpipeline";
    private static readonly (long Port, string Protocol)[] PortsInPlay =
        [(53, "UDP"), (53, "TCP"), (22, "TCP"), (80, "TCP"), (443, "TCP"), (4369, "TCP"), (5672, "TCP"), (6379, "TCP"),
         (3000, "TCP"), (6443, "TCP"), (8080, "TCP"), (8443, "TCP"), (9090, "TCP"), (15672, "TCP"), (25672, "TCP"), (35672, "TCP")];

    /// <summary>Where a cluster's API server may listen (Service IP: 443; kind, k3d, Docker Desktop: 6443; minikube: 8443).</summary>
    private static readonly long[] ApiServerPorts = [443, 6443, 8443];

    public static TheoryData<string> Overlays => [.. Manifests.Overlays];

    [Theory]
    [MemberData(nameof(Overlays))]
    public void Network_policies_allow_exactly_the_flows_the_app_needs(string overlay)
    {
        var rendered = Manifests.Render(overlay);
        var (peers, expected) = World(rendered, overlay);
        var model = new NetworkModel(Ns, [.. rendered.OfKind("NetworkPolicy")]);

        var wrong = new List<string>();
        foreach (var source in peers)
        {
            foreach (var destination in peers)
            {
                if (source.Namespace != Ns && destination.Namespace != Ns)
                {
                    continue; // neither side is governed by this namespace's policies
                }

                foreach (var (port, protocol) in PortsInPlay)
                {
                    var allowed = model.Allows(source, destination, port, protocol);
                    var needed = expected.Contains((source.Id, destination.Id, port, protocol));
                    if (allowed != needed)
                    {
                        wrong.Add($"{source} -> {destination}:{port}/{protocol} is {(allowed ? "allowed but not needed" : "needed but blocked")}");
                    }
                }
            }
        }

        Assert.True(wrong.Count == 0, $"{overlay}:\n" + string.Join("\n", wrong));
        Assert.Contains(expected, f => f.Destination == "redis" || f.Destination == "redis-external");
    }

    [Theory]
    [MemberData(nameof(Overlays))]
    public void The_namespace_denies_by_default(string overlay)
    {
        Assert.Contains(Manifests.Render(overlay).OfKind("NetworkPolicy"), p =>
            p["spec"]!["podSelector"]!.AsObject().Count == 0 &&
            p["spec"]!["policyTypes"]!.AsArray().Select(t => (string)t!).Order().SequenceEqual(["Egress", "Ingress"]) &&
            p["spec"]!["ingress"] is null && p["spec"]!["egress"] is null);
    }

    [Fact]
    public void The_evaluator_finds_an_extra_open_flow()
    {
        // The flow check can fail: an "allow everything" egress policy on worker-cpu opens flows nobody needs.
        var rendered = Manifests.Render("overlays/dev");
        var open = JsonNode.Parse("""{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"oops"},"spec":{"podSelector":{"matchLabels":{"app.kubernetes.io/name":"worker-cpu"}},"policyTypes":["Egress"],"egress":[{}]}}""")!.AsObject();
        var model = new NetworkModel(Ns, [.. rendered.OfKind("NetworkPolicy"), open]);
        var (peers, _) = World(rendered, "overlays/dev");
        var cpu = peers.Single(p => p.Id == "worker-cpu");
        var receiver = peers.Single(p => p.Id == "downstream-receiver");
        Assert.False(new NetworkModel(Ns, [.. rendered.OfKind("NetworkPolicy")]).Allows(cpu, peers.Single(p => p.Id == "internet"), 443));
        Assert.True(model.Allows(cpu, peers.Single(p => p.Id == "internet"), 443));
        Assert.False(model.Allows(cpu, receiver, 8080)); // still closed: the receiver's own ingress admits worker-io only
    }

    [Theory]
    [MemberData(nameof(Overlays))]
    public void Worker_cpu_reaches_rabbitmq_because_it_reads_the_rabbitmq_connection_string(string overlay)
    {
        // The flow list is derived from the code: Worker.Cpu reads ConnectionStrings:rabbitmq (chained events hand
        // their result on to the I/O lane), so the derived flows require worker-cpu -> rabbitmq:5672, and it is open.
        Assert.True(ServiceFacts.WorkerCpu.Uses("rabbitmq"), "Worker.Cpu no longer reads ConnectionStrings:rabbitmq");
        var rendered = Manifests.Render(overlay);
        var (peers, expected) = World(rendered, overlay);
        Assert.Contains(("worker-cpu", "rabbitmq", 5672L, "TCP"), expected);
        var model = new NetworkModel(Ns, [.. rendered.OfKind("NetworkPolicy")]);
        Assert.True(model.Allows(peers.Single(p => p.Id == "worker-cpu"), peers.Single(p => p.Id == "rabbitmq"), 5672));
    }

    [Fact]
    public void Dev_prometheus_scrapes_every_service_and_grafana_reaches_prometheus_but_not_the_brokers()
    {
        var rendered = Manifests.Render("overlays/dev");
        var (peers, _) = World(rendered, "overlays/dev");
        var model = new NetworkModel(Ns, [.. rendered.OfKind("NetworkPolicy")]);
        Peer P(string id) => peers.Single(p => p.Id == id);

        foreach (var service in new[] { "producer-api", "worker-cpu", "worker-io", "downstream-receiver" })
        {
            Assert.True(model.Allows(P("prometheus"), P(service), 8080), $"prometheus -> {service}:8080 is blocked");
        }

        Assert.True(model.Allows(P("prometheus"), P("kube-apiserver"), 6443));
        Assert.True(model.Allows(P("grafana"), P("prometheus"), 9090));
        Assert.False(model.Allows(P("prometheus"), P("internet"), 443));
        Assert.False(model.Allows(P("grafana"), P("redis"), 6379));
        Assert.False(model.Allows(P("prometheus"), P("redis"), 6379));
        Assert.False(model.Allows(P("worker-cpu"), P("grafana"), 3000));
    }

    private static (List<Peer> Peers, HashSet<(string Source, string Destination, long Port, string Protocol)> Expected) World(Rendered rendered, string overlay)
    {
        var peers = new List<Peer>();
        var n = 10;
        foreach (var workload in rendered.Workloads)
        {
            peers.Add(Peer.Pod(workload.Name, Ns, workload.PodLabels, $"10.244.0.{n++}", [.. workload.Ports]));
        }

        foreach (var cluster in rendered.OfKind("RabbitmqCluster"))
        {
            // The operator's pods: labelled with the cluster's name; AMQP, management, epmd, inter-node ports.
            var name = Rendered.Name(cluster);
            peers.Add(Peer.Pod(name, Ns,
                new Dictionary<string, string> { ["app.kubernetes.io/name"] = name, ["app.kubernetes.io/component"] = "rabbitmq", ["app.kubernetes.io/part-of"] = "rabbitmq" },
                $"10.244.0.{n++}", [("amqp", 5672, "TCP"), ("management", 15672, "TCP"), ("prometheus", 15692, "TCP"), ("epmd", 4369, "TCP"), ("cluster-links", 25672, "TCP")]));
        }

        peers.Add(Peer.Pod("kube-dns", "kube-system", new Dictionary<string, string> { ["k8s-app"] = "kube-dns" }, "10.96.0.10", [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]));
        peers.Add(Peer.Pod("prometheus-elsewhere", "monitoring", new Dictionary<string, string> { ["app.kubernetes.io/name"] = "prometheus" }, "10.244.1.5"));
        peers.Add(Peer.Pod("ingress-controller", "ingress-nginx", new Dictionary<string, string> { ["app.kubernetes.io/name"] = "ingress-nginx" }, "10.244.1.6"));
        peers.Add(Peer.Pod("keda-operator", "keda", new Dictionary<string, string> { ["app"] = "keda-operator" }, "10.244.1.7"));
        peers.Add(Peer.Pod("rabbitmq-operator", "rabbitmq-system", new Dictionary<string, string> { ["app.kubernetes.io/name"] = "rabbitmq-cluster-operator" }, "10.244.1.8"));
        peers.Add(Peer.Pod("other-pod", "other", new Dictionary<string, string> { ["app.kubernetes.io/name"] = "worker-io" }, "10.244.1.9"));
        peers.Add(Peer.External("internet", "203.0.113.10"));
        peers.Add(Peer.External("private-network", "10.99.0.5"));
        peers.Add(Peer.External("kube-apiserver", "172.18.0.2")); // a kind control-plane node
        foreach (var slice in rendered.OfKind("EndpointSlice"))
        {
            foreach (var address in slice["endpoints"]!.AsArray().SelectMany(e => e!["addresses"]!.AsArray()))
            {
                peers.Add(Peer.External(Rendered.StringMap(slice["metadata"]!["labels"])["kubernetes.io/service-name"] + "-external", (string)address!));
            }
        }

        var expected = new HashSet<(string, string, long, string)>();
        var inNamespace = peers.Where(p => p.Namespace == Ns).ToList();
        foreach (var pod in inNamespace)
        {
            expected.Add((pod.Id, "kube-dns", 53, "UDP"));
            expected.Add((pod.Id, "kube-dns", 53, "TCP"));
        }

        var redis = peers.Any(p => p.Id == "redis") ? "redis" : "redis-external";
        foreach (var service in new[] { ServiceFacts.ProducerApi, ServiceFacts.WorkerCpu, ServiceFacts.WorkerIo })
        {
            if (service.Uses("redis"))
            {
                expected.Add((service.Workload, redis, 6379, "TCP"));
            }

            if (service.Uses("rabbitmq"))
            {
                expected.Add((service.Workload, "rabbitmq", 5672, "TCP"));
            }

            expected.Add(("prometheus-elsewhere", service.Workload, 8080, "TCP"));
        }

        // The API takes requests from anywhere outside the namespace (ingress controllers, load balancers, other services).
        foreach (var outside in peers.Where(p => p.Namespace != Ns))
        {
            expected.Add((outside.Id, "producer-api", 8080, "TCP"));
        }

        if (overlay == "overlays/dev")
        {
            expected.Add(("worker-io", "downstream-receiver", 8080, "TCP"));

            // The dev Prometheus scrapes every service and the receiver, and reads pods from the API server, whose
            // address is cluster-specific: any private address outside the namespace on the API ports (the price of
            // not naming it). Grafana queries Prometheus; the two UIs take connections from outside (dev convenience).
            foreach (var scraped in new[] { "producer-api", "worker-cpu", "worker-io", "downstream-receiver" })
            {
                expected.Add(("prometheus", scraped, 8080, "TCP"));
            }

            foreach (var other in peers.Where(p => p.Namespace != Ns && IsPrivate(p.Ip)))
            {
                foreach (var port in ApiServerPorts)
                {
                    expected.Add(("prometheus", other.Id, port, "TCP"));
                }
            }

            expected.Add(("grafana", "prometheus", 9090, "TCP"));
            foreach (var outside in peers.Where(p => p.Namespace != Ns))
            {
                expected.Add((outside.Id, "grafana", 3000, "TCP"));
                expected.Add((outside.Id, "prometheus", 9090, "TCP"));
            }
        }
        else
        {
            expected.Add(("worker-io", "internet", 443, "TCP"));
            // KEDA reads events-io's ready and unacknowledged counts from the management API.
            expected.Add(("keda-operator", "rabbitmq", 15672, "TCP"));
            expected.Add(("rabbitmq-operator", "rabbitmq", 15672, "TCP"));

            // Monitoring: kube-prometheus-stack scrapes the brokers' metrics; the exporter reads Redis; every service
            // sends OTLP to the collector, which forwards it to a backend on the internet.
            expected.Add(("prometheus-elsewhere", "rabbitmq", 15692, "TCP"));
            expected.Add(("prometheus-elsewhere", "redis-exporter", 9121, "TCP"));
            expected.Add(("redis-exporter", "redis-external", 6379, "TCP"));
            foreach (var service in new[] { "producer-api", "worker-cpu", "worker-io" })
            {
                expected.Add((service, "otel-collector", 4317, "TCP"));
            }

            expected.Add(("otel-collector", "internet", 4317, "TCP"));
            foreach (var port in new long[] { 4369, 25672, 35672 })
            {
                expected.Add(("rabbitmq", "rabbitmq", port, "TCP"));
            }
        }

        return (peers, expected);
    }

    private static bool IsPrivate(System.Net.IPAddress ip) =>
        new[] { "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16" }.Any(c => System.Net.IPNetwork.Parse(c).Contains(ip));
}
