using System.Text.Json.Nodes;
using EventPipeline.Infra.Tests.Support;

namespace EventPipeline.Infra.Tests;

public class SchemaTests
{
    public static TheoryData<string> Targets => [.. Manifests.Targets];

    [Theory]
    [MemberData(nameof(Targets))]
    public void Every_rendered_object_is_valid_against_its_schema(string target)
    {
        var failures = Manifests.Render(target).Objects
            .SelectMany(o => Schemas.Validate(o).Select(e => $"{o["kind"]}/{Rendered.Name(o)}: {e}"))
            .ToList();

        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    public static TheoryData<string, string, string, string> UnknownFields => new()
    {
        // target, kind, name, JSON pointer of the object that gets the unknown field
        { "overlays/prod", "Deployment", "worker-io", "/spec/template/spec/containers/0/readinessProbe/httpGet" },
        { "overlays/prod", "Deployment", "producer-api", "/spec/template/spec/securityContext" },
        { "overlays/dev", "StatefulSet", "redis", "/spec/volumeClaimTemplates/0/spec" },
        { "overlays/dev", "Service", "redis", "/spec" },
        { "overlays/prod", "NetworkPolicy", "rabbitmq", "/spec/ingress/0" },
        { "overlays/prod", "HorizontalPodAutoscaler", "producer-api", "/spec" },
        { "overlays/prod", "ScaledObject", "worker-cpu", "/spec/triggers/0" },
        { "overlays/prod", "TriggerAuthentication", "redis-auth", "/spec/secretTargetRef/0" },
        { "overlays/prod", "RabbitmqCluster", "rabbitmq", "/spec" },
    };

    [Theory]
    [MemberData(nameof(UnknownFields))]
    public void An_unknown_field_is_rejected(string target, string kind, string name, string pointer)
    {
        var original = Manifests.Render(target).Get(kind, name);
        Assert.Empty(Schemas.Validate(original));

        var changed = (JsonObject)original.DeepClone();
        var parent = pointer.Split('/', StringSplitOptions.RemoveEmptyEntries)
            .Aggregate((JsonNode)changed, (node, part) => node is JsonArray a ? a[int.Parse(part, System.Globalization.CultureInfo.InvariantCulture)]! : node[part]!);
        parent.AsObject()["notARealField"] = "x";

        var errors = Schemas.Validate(changed);
        Assert.NotEmpty(errors);
        Assert.Contains(errors, e => e.Contains(pointer + "/notARealField", StringComparison.Ordinal));
    }

    [Fact]
    public void A_wrong_type_and_a_missing_required_field_are_rejected()
    {
        var deployment = (JsonObject)Manifests.Render("overlays/dev").Get("Deployment", "worker-cpu").DeepClone();
        deployment["spec"]!["template"]!["spec"]!["containers"]![0]!["ports"]![0]!["containerPort"] = "8080";
        Assert.Contains(Schemas.Validate(deployment), e => e.Contains("containerPort", StringComparison.Ordinal));

        var scaledObject = (JsonObject)Manifests.Render("overlays/prod").Get("ScaledObject", "worker-io").DeepClone();
        scaledObject["spec"]!.AsObject().Remove("scaleTargetRef");
        Assert.NotEmpty(Schemas.Validate(scaledObject));
    }

    [Fact]
    public void Each_schema_file_names_its_source_and_version()
    {
        Assert.Contains("@kubernetes/client-node@1.1.2 (Kubernetes OpenAPI v1.32.0)", (string?)Schemas.LoadFile(Schemas.KubernetesFile)["$comment"]);
        Assert.Contains("@kubernetes-models/keda@2.0.0 (KEDA v2.19.0", (string?)Schemas.LoadFile(Schemas.KedaFile)["$comment"]);
        Assert.StartsWith("HAND-WRITTEN", (string?)Schemas.LoadFile(Schemas.RabbitmqClusterFile)["$comment"]);
        Assert.True(File.Exists(Path.Combine(Repo.Schemas, "generate.sh")));
    }
}
