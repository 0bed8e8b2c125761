using System.Net;
using System.Text.Json.Nodes;

namespace EventPipeline.Infra.Tests.Support;

/// <summary>A party to a connection: a pod (namespace, labels, IP) or an address outside the cluster.</summary>
public sealed record Peer(string Id, string? Namespace, IReadOnlyDictionary<string, string> Labels, IPAddress Ip,
    IReadOnlyDictionary<string, string> NamespaceLabels, IReadOnlyList<(string? Name, long Port, string Protocol)> Ports)
{
    public bool IsPod => Namespace is not null;

    public static Peer Pod(string id, string ns, IReadOnlyDictionary<string, string> labels, string ip,
        IReadOnlyList<(string? Name, long Port, string Protocol)>? ports = null) =>
        new(id, ns, labels, IPAddress.Parse(ip), new Dictionary<string, string> { ["kubernetes.io/metadata.name"] = ns }, ports ?? []);

    public static Peer External(string id, string ip) =>
        new(id, null, new Dictionary<string, string>(), IPAddress.Parse(ip), new Dictionary<string, string>(), []);

    public override string ToString() => Id;
}

/// <summary>
/// Evaluates Kubernetes NetworkPolicy semantics for the policies of one namespace: a connection is allowed when the
/// source may send it (egress) and the destination may receive it (ingress). Pods outside the namespace and addresses
/// outside the cluster are not governed by these policies on their own side.
/// </summary>
public sealed class NetworkModel(string ns, IReadOnlyList<JsonObject> policies)
{
    public bool Allows(Peer source, Peer destination, long port, string protocol = "TCP") =>
        SideAllows(source, "Egress", destination, port, protocol) && SideAllows(destination, "Ingress", source, port, protocol);

    private bool SideAllows(Peer subject, string direction, Peer other, long port, string protocol)
    {
        if (subject.Namespace != ns)
        {
            return true;
        }

        var selecting = policies.Where(p => Types(p).Contains(direction) && Matches(p["spec"]!["podSelector"], subject.Labels)).ToList();
        if (selecting.Count == 0)
        {
            return true;
        }

        var ruleKey = direction == "Egress" ? "egress" : "ingress";
        var peerKey = direction == "Egress" ? "to" : "from";
        var target = direction == "Egress" ? other : subject;
        return selecting.Any(p => (p["spec"]![ruleKey]?.AsArray() ?? []).Cast<JsonObject>().Any(rule =>
            PeersMatch(rule[peerKey]?.AsArray(), other) && PortsMatch(rule["ports"]?.AsArray(), target, port, protocol)));
    }

    private static IEnumerable<string> Types(JsonObject policy)
    {
        if (policy["spec"]!["policyTypes"] is JsonArray types)
        {
            return types.Select(t => (string)t!);
        }

        // The API server's default: Ingress always, Egress when there are egress rules.
        return policy["spec"]!["egress"] is null ? ["Ingress"] : ["Ingress", "Egress"];
    }

    private bool PeersMatch(JsonArray? peers, Peer other)
    {
        if (peers is null || peers.Count == 0)
        {
            return true; // no "from"/"to": every peer
        }

        return peers.Cast<JsonObject>().Any(peer =>
        {
            if (peer["ipBlock"] is JsonObject block)
            {
                return InCidr(other.Ip, (string)block["cidr"]!) &&
                       !(block["except"]?.AsArray() ?? []).Any(e => InCidr(other.Ip, (string)e!));
            }

            if (!other.IsPod)
            {
                return false;
            }

            var nsSelector = peer["namespaceSelector"];
            var podSelector = peer["podSelector"];
            var namespaceOk = nsSelector is null ? other.Namespace == ns : Matches(nsSelector, other.NamespaceLabels);
            var podOk = podSelector is null || Matches(podSelector, other.Labels);
            return namespaceOk && podOk;
        });
    }

    private static bool PortsMatch(JsonArray? ports, Peer destination, long port, string protocol)
    {
        if (ports is null || ports.Count == 0)
        {
            return true;
        }

        return ports.Cast<JsonObject>().Any(p =>
        {
            if (((string?)p["protocol"] ?? "TCP") != protocol)
            {
                return false;
            }

            var declared = p["port"];
            if (declared is null)
            {
                return true;
            }

            if (declared.GetValueKind() == System.Text.Json.JsonValueKind.String)
            {
                var name = declared.GetValue<string>();
                return destination.Ports.Any(dp => dp.Name == name && dp.Port == port && dp.Protocol == protocol);
            }

            var from = declared.GetValue<long>();
            var to = p["endPort"]?.GetValue<long>() ?? from;
            return port >= from && port <= to;
        });
    }

    public static bool Matches(JsonNode? selector, IReadOnlyDictionary<string, string> labels)
    {
        if (selector is not JsonObject s)
        {
            return true;
        }

        var matchLabels = Rendered.StringMap(s["matchLabels"]);
        if (!Rendered.Selects(matchLabels, labels))
        {
            return false;
        }

        foreach (var expression in s["matchExpressions"]?.AsArray().Cast<JsonObject>() ?? [])
        {
            var key = (string)expression["key"]!;
            var values = expression["values"]?.AsArray().Select(v => (string)v!).ToHashSet() ?? [];
            var has = labels.TryGetValue(key, out var value);
            var ok = (string)expression["operator"]! switch
            {
                "In" => has && values.Contains(value!),
                "NotIn" => !has || !values.Contains(value!),
                "Exists" => has,
                "DoesNotExist" => !has,
                var op => throw new NotSupportedException(op),
            };
            if (!ok)
            {
                return false;
            }
        }

        return true;
    }

    private static bool InCidr(IPAddress address, string cidr) => IPNetwork.Parse(cidr).Contains(address);
}
